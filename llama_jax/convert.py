"""Checkpoint formats: loading Hugging Face LLaMA checkpoints (config.json + *.safetensors) into
our model, and loading any supported checkpoint for inference (`load_model`).

Hugging Face's port rotates the two halves of each head with RoPE, where Meta's code (and ours)
rotates interleaved pairs; its conversion script permutes the rows of the q and k projections to
match. Loading undoes that permutation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import config_dict
from safetensors import safe_open
from tqdm import tqdm

from llama_jax.checkpoint import restore_params
from llama_jax.model import Llama, ModelConfig, abstract_model
from llama_jax.sharding import MeshRules, logical_rules, make_mesh, param_shardings, with_shardings
from llama_jax.tokenizer import Tokenizer

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


def _read_safetensors(directory: Path) -> dict[str, np.ndarray]:
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {directory}; this loader reads "
                            "safetensors only (convert .bin checkpoints with transformers first)")
  tensors = {}
  # framework="flax" reads bfloat16, which numpy cannot; keep the arrays on the host.
  with jax.default_device(jax.devices("cpu")[0]):
    for file in tqdm(files, desc=f"reading {directory}", unit="file", disable=len(files) < 2):
      with safe_open(file, framework="flax") as f:
        for name in f.keys():
          tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
  return tensors


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Hugging Face [heads * head_dim, dim] q/k rows (halves) -> Meta's order (interleaved pairs)."""
  rows, dim = w.shape
  return w.reshape(n_heads, 2, rows // n_heads // 2, dim).swapaxes(1, 2).reshape(rows, dim)


def params_from_hf(tensors: dict[str, np.ndarray], config: ModelConfig,
                   source: str = "checkpoint") -> dict:
  """Our parameter tree (nested dict of arrays) from Hugging Face tensor names and layouts."""
  tensors = {k: v for k, v in tensors.items() if not k.endswith(_DERIVED_TENSORS)}
  used = set()

  def take(name: str) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f"{source}: tensor {name!r} is missing")
    used.add(name)
    return tensors[name]

  h, hd, d = config.n_heads, config.head_dim, config.dim

  def stacked(suffix: str, transform) -> np.ndarray:
    return np.stack([transform(take(f"model.layers.{i}.{suffix}"))
                     for i in range(config.n_layers)])

  params = {
      "embedding": take("model.embed_tokens.weight"),
      "norm": {"scale": take("model.norm.weight")},
      "output": take("lm_head.weight").T,
      "layers": {
          "attention_norm": {"scale": stacked("input_layernorm.weight", lambda w: w)},
          "ffn_norm": {"scale": stacked("post_attention_layernorm.weight", lambda w: w)},
          "attention": {
              "wq": stacked("self_attn.q_proj.weight",
                            lambda w: _unpermute_rope_rows(w, h).T.reshape(d, h, hd)),
              "wk": stacked("self_attn.k_proj.weight",
                            lambda w: _unpermute_rope_rows(w, h).T.reshape(d, h, hd)),
              "wv": stacked("self_attn.v_proj.weight", lambda w: w.T.reshape(d, h, hd)),
              "wo": stacked("self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
          },
          "feed_forward": {
              "w1": stacked("mlp.gate_proj.weight", lambda w: w.T),
              "w3": stacked("mlp.up_proj.weight", lambda w: w.T),
              "w2": stacked("mlp.down_proj.weight", lambda w: w.T),
          },
      },
  }
  if unused := sorted(set(tensors) - used):
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
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} not found: expected a Hugging Face LLaMA directory "
                            "with config.json and *.safetensors")
  config = model_config_from_hf(json.loads(config_file.read_text()), str(config_file))
  if dtype is not None:
    config = dataclasses.replace(config, dtype=jnp.dtype(dtype).name)
  params = params_from_hf(_read_safetensors(directory), config, str(directory))
  return _assemble(config, params, str(directory)), config


# --- loading any checkpoint for inference ----------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
  """A checkpoint's parameters placed on a mesh, with its config and tokenizer."""

  model_config: ModelConfig
  params: nnx.State  # placed with the shardings of `mesh_rules`
  tokenizer: Tokenizer
  mesh_rules: MeshRules
  description: str  # what was loaded, for results files


def _run_directory(path: Path) -> tuple[Path, int | None]:
  """(run directory, step or None for the latest) for a --workdir or one of its checkpoints."""
  if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
    return path, None
  if path.name.isdigit() and path.parent.name == "checkpoints":
    return path.parent.parent, int(path.name)
  raise FileNotFoundError(
      f"--ckpt={path} is neither a Hugging Face LLaMA directory (config.json, *.safetensors, "
      "tokenizer.model) nor a training run directory (config.json, checkpoints/) or one of its "
      "checkpoints/<step> directories")


def load_model(ckpt: str | Path, *, tokenizer: str | Path | None = None, dtype: str | None = None,
               mesh_config: dict | None = None,
               devices: Sequence[jax.Device] | None = None) -> LoadedModel:
  """A Hugging Face LLaMA directory or a llama_jax run (its latest or a given checkpoint) with
  the parameters sharded over a mesh (default: FSDP over every device), for inference.

  Only the parameters of a run's checkpoint are read (not the optimizer state), checksums
  verified. `dtype` overrides the compute dtype.
  """
  path = Path(ckpt)
  mesh_config = mesh_config or {"data": 1, "fsdp": -1, "tensor": 1}
  mesh_rules = MeshRules(make_mesh(mesh_config, devices), logical_rules(sequence_parallel=False))
  hf_config = path / "config.json"
  # Hugging Face configs name a model_type (from_pretrained refuses non-LLaMA ones, saying why);
  # our runs' config.json does not.
  if hf_config.is_file() and "model_type" in json.loads(hf_config.read_text()):
    model, model_config = from_pretrained(path, dtype=dtype)
    tokenizer_file = Path(tokenizer) if tokenizer else path / "tokenizer.model"
    params = nnx.state(model, nnx.Param)
    params = jax.device_put(params, param_shardings(params, mesh_rules))
    description = f"Hugging Face LLaMA {path}"
  else:
    run, step = _run_directory(path)
    config = config_dict.ConfigDict(json.loads((run / "config.json").read_text()))
    model_config = ModelConfig.from_dict(config.model)
    if dtype is not None:
      model_config = dataclasses.replace(model_config, dtype=jnp.dtype(dtype).name)
    if tokenizer:
      tokenizer_file = Path(tokenizer)
    elif config.data.get("tokenizer"):
      tokenizer_file = Path(config.data.tokenizer)
    else:
      raise ValueError(f"{run / 'config.json'} names no data.tokenizer; give --tokenizer=FILE")
    abstract = nnx.state(abstract_model(model_config), nnx.Param)
    params, step = restore_params(run, with_shardings(abstract,
                                                      param_shardings(abstract, mesh_rules)), step)
    description = f"llama_jax run {run}, step {step}"
  if not Path(tokenizer_file).is_file():
    raise FileNotFoundError(f"tokenizer {tokenizer_file} not found: give --tokenizer=FILE (the "
                            "SentencePiece model the checkpoint was trained with)")
  return LoadedModel(model_config, params, Tokenizer(tokenizer_file), mesh_rules, description)
