"""Hugging Face LLaMA directories: config.json (LlamaConfig) with model.safetensors, or shards with
model.safetensors.index.json, and tokenizer.model. Read into our parameter tree or a model
(`from_pretrained`), and written from our parameter tree."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from llama_jax.formats.layout import (
    ROPE_PERMUTED,
    Tensor,
    every_tensor,
    from_ours,
    params_from_torch_layout,
    permute_rope_rows,
    unpermute_rope_rows,
)
from llama_jax.model import Llama, ModelConfig, abstract_model

# Buffers some checkpoints carry that our model derives instead.
_DERIVED_TENSORS = ("rotary_emb.inv_freq",)


def model_config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
  """Our ModelConfig for a Hugging Face LlamaConfig dict; refuses what LLaMA-1 does not have."""
  problems = []
  if hf.get("model_type") != "llama":
    problems.append(f"model_type is {hf.get('model_type')!r}, expected 'llama'")
  heads = hf["num_attention_heads"]
  if hf.get("num_key_value_heads", heads) != heads:
    problems.append(f"grouped-query attention (num_key_value_heads={hf['num_key_value_heads']} "
                    f"!= num_attention_heads={heads})")
  rope = hf.get("rope_parameters") or {}
  if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
    problems.append(f"rope scaling ({hf.get('rope_scaling') or rope})")
  if hf.get("tie_word_embeddings", False):
    problems.append("tied input and output embeddings (tie_word_embeddings=true)")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key, False):
      problems.append(f"biases ({key}=true)")
  if hf.get("hidden_act", "silu") != "silu":
    problems.append(f"hidden_act={hf['hidden_act']!r} (LLaMA uses SwiGLU with silu)")
  if hf.get("head_dim", hf["hidden_size"] // heads) * heads != hf["hidden_size"]:
    problems.append(f"head_dim={hf['head_dim']} * heads != hidden_size={hf['hidden_size']}")
  if problems:
    raise ValueError(f"{source}: unsupported by this LLaMA-1 model: " + "; ".join(problems))
  return ModelConfig(
      vocab_size=hf["vocab_size"],
      dim=hf["hidden_size"],
      n_layers=hf["num_hidden_layers"],
      n_heads=heads,
      ffn_dim=hf["intermediate_size"],
      context_length=hf.get("max_position_embeddings", 2048),
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
  )


def hf_config_from_model(config: ModelConfig, dtype: str) -> dict:
  """A Hugging Face LlamaConfig dict for our config; read by transformers 4 and 5 alike (each
  takes its own spelling of the RoPE base and the dtype and ignores the other's)."""
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": config.vocab_size,
      "hidden_size": config.dim,
      "intermediate_size": config.ffn_dim,
      "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads,
      "num_key_value_heads": config.n_heads,
      "head_dim": config.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": config.context_length,
      "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "rope_scaling": None,
      "attention_bias": False,
      "mlp_bias": False,
      "tie_word_embeddings": False,
      "bos_token_id": 1,
      "eos_token_id": 2,
      "use_cache": True,
      "torch_dtype": dtype,
      "dtype": dtype,
  }


def read_hf_config(directory: Path) -> ModelConfig:
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} not found: expected a Hugging Face LLaMA directory "
                            "with config.json and *.safetensors")
  return model_config_from_hf(json.loads(config_file.read_text()), str(config_file))


class SafetensorsDirectory(Mapping):
  """The tensors of a directory's *.safetensors files by name, each read (as float32) when asked
  for, so that a conversion never holds the whole checkpoint twice."""

  def __init__(self, directory: Path):
    files = sorted(directory.glob("*.safetensors"))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {directory}; this loader reads "
                              "safetensors only (convert .bin checkpoints with transformers first)")
    self._file_of: dict[str, Path] = {}
    for file in files:
      with safe_open(file, framework="flax") as f:
        self._file_of.update(dict.fromkeys(f.keys(), file))

  def __getitem__(self, name: str) -> np.ndarray:
    # framework="flax" reads bfloat16, which numpy's cannot; keep the arrays on the host.
    with jax.default_device(jax.devices("cpu")[0]), safe_open(self._file_of[name], "flax") as f:
      return np.asarray(f.get_tensor(name), dtype=np.float32)

  def __iter__(self):
    return iter(self._file_of)

  def __len__(self):
    return len(self._file_of)


def params_from_hf(tensors: Mapping[str, np.ndarray], config: ModelConfig,
                   source: str = "checkpoint", dtype="float32") -> dict:
  """Our parameter tree (nested dict of numpy arrays) from Hugging Face tensor names and layouts."""
  hf_name = {}
  for tensor, layer in every_tensor(config.n_layers):
    hf_name[tensor.meta.format(i=layer)] = (tensor.hf.format(i=layer),
                                            tensor.path in ROPE_PERMUTED)
  used, d = set(), config.dim

  def read(meta_name: str) -> np.ndarray:
    name, permuted = hf_name[meta_name]
    if name not in tensors:
      raise KeyError(f"{source}: tensor {name!r} is missing")
    used.add(name)
    w = tensors[name]
    # A tensor of the wrong shape is left for params_from_torch_layout to name.
    return unpermute_rope_rows(w, config.n_heads) if permuted and w.shape == (d, d) else w

  params = params_from_torch_layout(read, lambda meta: repr(hf_name[meta][0]), config, dtype,
                                    source)
  if unused := sorted(name for name in set(tensors) - used
                      if not name.endswith(_DERIVED_TENSORS)):
    raise ValueError(f"{source}: {len(unused)} tensors this model has no place for, e.g. "
                     f"{unused[:5]}")
  return params


def _assemble(config: ModelConfig, params: dict, source: str) -> Llama:
  graphdef, state = nnx.split(abstract_model(config))
  expected = nnx.to_pure_dict(state)
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_given = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, abstract in flat_expected.items():
    given = flat_given[path]
    if given.shape != abstract.shape:
      raise ValueError(f"{source}: parameter {jax.tree_util.keystr(path)} has shape "
                       f"{given.shape}, the config implies {abstract.shape}")
  dtype = jnp.dtype(config.param_dtype)
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, dtype), params))
  return nnx.merge(graphdef, state)


def from_pretrained(path: str | Path, dtype=None) -> tuple[Llama, ModelConfig]:
  """(model, config) from a Hugging Face LLaMA directory; `dtype` overrides the compute dtype."""
  directory = Path(path)
  config = read_hf_config(directory)
  if dtype is not None:
    config = dataclasses.replace(config, dtype=jnp.dtype(dtype).name)
  params = params_from_hf(SafetensorsDirectory(directory), config, str(directory))
  return _assemble(config, params, str(directory)), config


def _at(params: dict, tensor: Tensor) -> np.ndarray:
  for key in tensor.path:
    params = params[key]
  return params


def write_weights(directory: Path, params: dict, config: ModelConfig, dtype: str,
                  max_shard_bytes: int) -> None:
  """Our parameter tree (nested dict of host arrays) as Hugging Face tensors of `dtype`:
  model.safetensors, or files of at most `max_shard_bytes` and model.safetensors.index.json."""

  def hf_tensor(tensor: Tensor, layer: int | None) -> np.ndarray:
    w = _at(params, tensor)
    w = from_ours(w if layer is None else w[layer], tensor.layout)
    if tensor.path in ROPE_PERMUTED:
      w = permute_rope_rows(w, config.n_heads)
    return np.ascontiguousarray(w.astype(jnp.dtype(dtype), copy=False))

  # Shards planned from sizes alone (as transformers does: a new file when the next tensor would
  # overflow the limit), then written one at a time so that only one shard is ever copied.
  itemsize = jnp.dtype(dtype).itemsize
  shards: list[list[tuple[Tensor, int | None]]] = [[]]
  shard_bytes, total = 0, 0
  for tensor, layer in every_tensor(config.n_layers):
    w = _at(params, tensor)
    size = (w.size if layer is None else w[0].size) * itemsize
    if shards[-1] and shard_bytes + size > max_shard_bytes:
      shards.append([])
      shard_bytes = 0
    shards[-1].append((tensor, layer))
    shard_bytes += size
    total += size

  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
  weight_map = {}
  for name, shard in zip(tqdm(names, desc=f"writing {directory}", unit="file"), shards,
                         strict=True):
    tensors = {tensor.hf.format(i=layer): hf_tensor(tensor, layer) for tensor, layer in shard}
    save_file(tensors, directory / name, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, name))
    del tensors
  if len(shards) > 1:
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
