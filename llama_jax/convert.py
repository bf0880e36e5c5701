"""Checkpoint formats: Meta's LLaMA release, Hugging Face LLaMA directories and our orbax runs;
loading any of them for inference (`load_model`) and converting between them.

    python -m llama_jax.convert meta-to-orbax SRC DST [--tokenizer=FILE] [--dtype=D] [--force]
    python -m llama_jax.convert hf-to-orbax   SRC DST [--tokenizer=FILE] [--dtype=D] [--force]
    python -m llama_jax.convert orbax-to-hf   SRC DST [--tokenizer=FILE] [--dtype=D] [--force]
                                              [--max_shard_size=5GB]

Formats:
  Meta       `params.json` and `consolidated.NN.pth`, one file per model-parallel rank (fairscale):
             wq, wk, wv, w1, w3 and output split along their output rows, wo and w2 along their
             input columns, the token embedding along its embedding dim, norms replicated.
             tokenizer.model is looked for in SRC, then in SRC's parent (where Meta's download
             puts it). Files are read with torch.load(weights_only=True, mmap=True): a file that
             pickles anything but tensors is refused, never executed.
  Hugging Face  config.json (LlamaConfig) with model.safetensors, or shards with
             model.safetensors.index.json above --max_shard_size, and tokenizer.model.
  orbax run  what training writes and `load_model` / `--ckpt` read:
               DST/config.json        {"model": ModelConfig fields, "data": {"tokenizer":
                                       "tokenizer.model"}, "converted_from": {...}}
               DST/tokenizer.model    a copy of the SentencePiece model
               DST/checkpoints/0/     an orbax step with item `state` = {"params": the parameter
                                       tree} and its CRC-32 tables (llama_jax.checkpoint)
             A run's relative data.tokenizer is looked up in the run directory first, so the
             directory can be moved. model.param_dtype is the stored dtype (--dtype, default
             float32, so that round trips are bit-exact).

Layouts: torch weights are [out, in]; ours are [in, out] with the head axes split out
(llama_jax.model). Meta's code and ours apply RoPE to interleaved pairs of each head; Hugging
Face's port rotates the two halves, and permutes the q and k rows to match, so those rows are
un-permuted on the way in and permuted back on the way out. Meta's rows need neither.

Conversions hold about one copy of the weights in host memory: tensors are read one at a time
(safetensors and .pth files memory-mapped) into preallocated stacked arrays, and written shard by
shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import config_dict
from safetensors import safe_open
from tqdm import tqdm

from llama_jax.checkpoint import CorruptCheckpoint, restore_params, save_params
from llama_jax.model import Llama, ModelConfig, abstract_model
from llama_jax.sharding import MeshRules, logical_rules, make_mesh, param_shardings, with_shardings
from llama_jax.tokenizer import Tokenizer

# Buffers some checkpoints carry that our model derives instead.
_DERIVED_TENSORS = ("rotary_emb.inv_freq",)
_META_DERIVED_TENSORS = ("rope.freqs",)

# --- one table of names and layouts for the three formats ----------------------------------


@dataclasses.dataclass(frozen=True)
class _Tensor:
  path: tuple[str, ...]  # in our parameter tree; block tensors are stacked on a leading layer axis
  meta: str  # Meta's name ("{i}": the layer)
  hf: str  # Hugging Face's name
  layout: str  # how the torch [out, in] matrix maps onto ours, see _to_ours
  meta_split: int | None  # the dim Meta's model-parallel ranks split; None: replicated


_GLOBAL_TENSORS = (
    _Tensor(("embedding",), "tok_embeddings.weight", "model.embed_tokens.weight", "same", 1),
    _Tensor(("norm", "scale"), "norm.weight", "model.norm.weight", "same", None),
    _Tensor(("output",), "output.weight", "lm_head.weight", "transpose", 0),
)
_LAYER_TENSORS = (
    _Tensor(("layers", "attention", "wq"), "layers.{i}.attention.wq.weight",
            "model.layers.{i}.self_attn.q_proj.weight", "in_heads", 0),
    _Tensor(("layers", "attention", "wk"), "layers.{i}.attention.wk.weight",
            "model.layers.{i}.self_attn.k_proj.weight", "in_heads", 0),
    _Tensor(("layers", "attention", "wv"), "layers.{i}.attention.wv.weight",
            "model.layers.{i}.self_attn.v_proj.weight", "in_heads", 0),
    _Tensor(("layers", "attention", "wo"), "layers.{i}.attention.wo.weight",
            "model.layers.{i}.self_attn.o_proj.weight", "out_heads", 1),
    _Tensor(("layers", "feed_forward", "w1"), "layers.{i}.feed_forward.w1.weight",
            "model.layers.{i}.mlp.gate_proj.weight", "transpose", 0),
    _Tensor(("layers", "feed_forward", "w2"), "layers.{i}.feed_forward.w2.weight",
            "model.layers.{i}.mlp.down_proj.weight", "transpose", 1),
    _Tensor(("layers", "feed_forward", "w3"), "layers.{i}.feed_forward.w3.weight",
            "model.layers.{i}.mlp.up_proj.weight", "transpose", 0),
    _Tensor(("layers", "attention_norm", "scale"), "layers.{i}.attention_norm.weight",
            "model.layers.{i}.input_layernorm.weight", "same", None),
    _Tensor(("layers", "ffn_norm", "scale"), "layers.{i}.ffn_norm.weight",
            "model.layers.{i}.post_attention_layernorm.weight", "same", None),
)
_ROPE_PERMUTED = {("layers", "attention", "wq"), ("layers", "attention", "wk")}


def _tensors(n_layers: int) -> Iterator[tuple[_Tensor, int | None]]:
  """Every tensor of a model with its layer (None for the global ones), in Hugging Face's order."""
  yield _GLOBAL_TENSORS[0], None
  for i in range(n_layers):
    for tensor in _LAYER_TENSORS:
      yield tensor, i
  yield from ((tensor, None) for tensor in _GLOBAL_TENSORS[1:])


def _to_ours(w: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
  """A torch-layout tensor in our layout `shape` (one layer's, for block tensors)."""
  if layout == "same":
    return w
  return w.T.reshape(shape)  # in_heads: [d, h, hd]; out_heads: [h, hd, d]; transpose: 2-D


def _from_ours(w: np.ndarray, layout: str) -> np.ndarray:
  """Our layout back to torch's [out, in] (or the embedding's [vocab, dim])."""
  if layout == "same":
    return w
  if layout == "in_heads":
    w = w.reshape(w.shape[0], -1)
  elif layout == "out_heads":
    w = w.reshape(-1, w.shape[-1])
  return w.T


def _torch_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "same":
    return ours
  if layout == "in_heads":
    return (ours[1] * ours[2], ours[0])
  if layout == "out_heads":
    return (ours[2], ours[0] * ours[1])
  return tuple(reversed(ours))


def _keystr(path: tuple[str, ...]) -> str:
  return "".join(f"[{key!r}]" for key in path)


def _params_from_torch_layout(read: Callable[[str], np.ndarray], name_of: Callable[[str], str],
                              config: ModelConfig, dtype, source: str) -> dict:
  """Our parameter tree (nested dict of numpy arrays of `dtype`) from torch-layout tensors with
  Meta's q/k row order: read(meta_name); name_of(meta_name) is the name errors show.

  Block tensors go straight into preallocated stacked arrays, so besides the result only one
  tensor is held at a time.
  """
  dtype = np.dtype(jnp.dtype(dtype))
  expected = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
  params: dict = {}
  for tensor in _GLOBAL_TENSORS + _LAYER_TENSORS:
    node = params
    for key in tensor.path[:-1]:
      node = node.setdefault(key, {})
    leaf = expected
    for key in tensor.path:
      leaf = leaf[key]
    node[tensor.path[-1]] = _aligned_empty(leaf.shape, dtype)

  def convert(tensor: _Tensor, layer: int | None) -> None:
    target = params
    for key in tensor.path:
      target = target[key]
    ours = target.shape if layer is None else target.shape[1:]
    name = tensor.meta.format(i=layer)
    w = read(name)
    want = _torch_shape(tensor.layout, ours)
    if tuple(w.shape) != want:
      where = _keystr(tensor.path) + ("" if layer is None else f" of layer {layer}")
      raise ValueError(f"{source}: tensor {name_of(name)} has shape {tuple(w.shape)}, but "
                       f"{where} of this model ({_describe(config)}) needs {want}")
    if layer is None:
      target[...] = _to_ours(w, tensor.layout, ours)
    else:
      target[layer] = _to_ours(w, tensor.layout, ours)

  for tensor in _GLOBAL_TENSORS:
    convert(tensor, None)
  for i in tqdm(range(config.n_layers), desc=f"converting {source}", unit="layer"):
    for tensor in _LAYER_TENSORS:
      convert(tensor, i)
  return params


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
  """np.empty on a 64-byte boundary: jax then places it on the CPU without copying it."""
  size = int(np.prod(shape)) * dtype.itemsize
  buffer = np.empty(size + alignment, np.uint8)
  start = -buffer.ctypes.data % alignment
  return buffer[start:start + size].view(dtype).reshape(shape)


def _describe(config: ModelConfig) -> str:
  return (f"vocab {config.vocab_size}, dim {config.dim}, {config.n_layers} layers, "
          f"{config.n_heads} heads, ffn {config.ffn_dim}")


# --- Hugging Face ------------------------------------------------------------------------------


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


class _SafetensorsDirectory(Mapping):
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


def _read_safetensors(directory: Path) -> Mapping[str, np.ndarray]:
  return _SafetensorsDirectory(directory)


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Hugging Face [heads * head_dim, dim] q/k rows (halves) -> Meta's order (interleaved pairs)."""
  rows, dim = w.shape
  return w.reshape(n_heads, 2, rows // n_heads // 2, dim).swapaxes(1, 2).reshape(rows, dim)


def _permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Meta's q/k rows (interleaved pairs) -> Hugging Face's order (halves)."""
  rows, dim = w.shape
  return w.reshape(n_heads, rows // n_heads // 2, 2, dim).swapaxes(1, 2).reshape(rows, dim)


def params_from_hf(tensors: Mapping[str, np.ndarray], config: ModelConfig,
                   source: str = "checkpoint", dtype="float32") -> dict:
  """Our parameter tree (nested dict of numpy arrays) from Hugging Face tensor names and layouts."""
  hf_name = {}
  for tensor, layer in _tensors(config.n_layers):
    hf_name[tensor.meta.format(i=layer)] = (tensor.hf.format(i=layer),
                                            tensor.path in _ROPE_PERMUTED)
  used, d = set(), config.dim

  def read(meta_name: str) -> np.ndarray:
    name, permuted = hf_name[meta_name]
    if name not in tensors:
      raise KeyError(f"{source}: tensor {name!r} is missing")
    used.add(name)
    w = tensors[name]
    # A tensor of the wrong shape is left for _params_from_torch_layout to name.
    return _unpermute_rope_rows(w, config.n_heads) if permuted and w.shape == (d, d) else w

  params = _params_from_torch_layout(read, lambda meta: repr(hf_name[meta][0]), config, dtype,
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


def _read_hf_config(directory: Path) -> ModelConfig:
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} not found: expected a Hugging Face LLaMA directory "
                            "with config.json and *.safetensors")
  return model_config_from_hf(json.loads(config_file.read_text()), str(config_file))


def from_pretrained(path: str | Path, dtype=None) -> tuple[Llama, ModelConfig]:
  """(model, config) from a Hugging Face LLaMA directory; `dtype` overrides the compute dtype."""
  directory = Path(path)
  config = _read_hf_config(directory)
  if dtype is not None:
    config = dataclasses.replace(config, dtype=jnp.dtype(dtype).name)
  params = params_from_hf(_read_safetensors(directory), config, str(directory))
  return _assemble(config, params, str(directory)), config


# --- Meta's release ----------------------------------------------------------------------------


def _torch():
  try:
    import torch
  except ImportError:
    raise ImportError("reading Meta's .pth files needs PyTorch (the CPU build will do): "
                      "pip install torch") from None
  return torch


def _load_pth(file: Path) -> dict:
  """A .pth file's dict of tensors, memory-mapped; anything but plain tensors is refused unread."""
  torch = _torch()
  try:
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
  except pickle.UnpicklingError as error:
    # Only the offending name is kept from torch's message: the rest suggests ways around the
    # check (weights_only=False, allow-listing), which would run the file's code.
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    detail = f"it calls {found.group(1)}" if found else "it holds more than tensors"
    raise ValueError(f"{file}: refused to load: it pickles objects other than tensors, and "
                     f"unpickling them could run code from the file ({detail}). Convert only "
                     "checkpoints you trust, saved as a dict of tensors.") from None
  except Exception as error:  # truncated files, the legacy non-zip format, ...
    raise ValueError(f"{file} is not a readable PyTorch checkpoint ({error}); re-download it") \
        from None
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise ValueError(f"{file}: expected a dict of tensors by name (Meta's consolidated.NN.pth), "
                     f"got a {type(state).__name__} holding other things")
  return state


def _meta_ffn_dim(dim: int, multiple_of: int, multiplier: float | None) -> int:
  """Meta's rule for the SwiGLU hidden size: 2/3 of 4 * dim (times ffn_dim_multiplier where
  params.json gives one), rounded up to a multiple of multiple_of."""
  hidden = int(2 * 4 * dim / 3)
  if multiplier is not None:
    hidden = int(multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class _MetaCheckpoint:
  """Meta's params.json and consolidated.NN.pth files, the ranks' pieces joined tensor by tensor."""

  def __init__(self, directory: Path):
    self.directory = directory
    params_file = directory / "params.json"
    if not params_file.is_file():
      raise FileNotFoundError(
          f"{params_file} not found: SRC must be a directory of Meta's LLaMA release (e.g. "
          "llama/7B) holding params.json and consolidated.00.pth ...")
    self.params_file = params_file
    self.params = json.loads(params_file.read_text())
    missing = [k for k in ("dim", "n_heads", "n_layers") if k not in self.params]
    if missing:
      raise ValueError(f"{params_file} lacks {missing}: is it Meta's params.json?")
    self.files = sorted(directory.glob("consolidated.*.pth"))
    if not self.files:
      raise FileNotFoundError(f"no consolidated.*.pth files in {directory}")
    numbers = [re.fullmatch(r"consolidated\.(\d+)\.pth", f.name) for f in self.files]
    if [int(m.group(1)) if m else None for m in numbers] != list(range(len(self.files))):
      raise ValueError(f"{directory}: the weight files are {[f.name for f in self.files]}; "
                       "expected consolidated.00.pth ... consolidated.NN.pth, one per rank, "
                       "none missing")
    self.shards = [_load_pth(f) for f in tqdm(self.files, desc="opening", unit="file",
                                              disable=len(self.files) < 2)]
    self._check_names()

  def _check_names(self) -> None:
    expected = {t.meta.format(i=i) for t, i in _tensors(self.params["n_layers"])}
    for file, shard in zip(self.files, self.shards, strict=True):
      names = set(shard) - set(_META_DERIVED_TENSORS)
      if missing := sorted(expected - names, key=_natural):
        raise ValueError(
            f"{file} lacks {len(missing)} tensors, e.g. {missing[:5]} ({self.params_file} says "
            f"n_layers={self.params['n_layers']}): the file is incomplete or from another model; "
            "re-download it")
      if extra := sorted(names - expected, key=_natural):
        raise ValueError(
            f"{file} has {len(extra)} tensors this model has no place for, e.g. {extra[:5]} "
            f"({self.params_file} says n_layers={self.params['n_layers']}): a LLaMA-1 model has "
            "none of them; check that params.json belongs to these weights")

  def _pieces(self, name: str) -> list:
    pieces = [shard.pop(name) for shard in self.shards]
    shapes = [tuple(p.shape) for p in pieces]
    if len(set(shapes)) > 1:
      raise ValueError(f"ranks disagree on the shape of tensor {name!r}: " + ", ".join(
          f"{f.name} has {s}" for f, s in zip(self.files, shapes, strict=True)) +
          f"; the files in {self.directory} come from different checkpoints: re-download them")
    return pieces

  def shape(self, name: str) -> tuple[int, ...]:
    """The full (joined) shape of a tensor, without reading it."""
    split = _META_SPLIT[name.split(".", 2)[-1] if name.startswith("layers.") else name]
    shape = list(self.shards[0][name].shape)
    if split is not None:
      shape[split] *= len(self.shards)
    return tuple(shape)

  def read(self, name: str) -> np.ndarray:
    """A tensor joined across ranks as float32 numpy; the ranks' pieces are dropped."""
    torch = _torch()
    split = _META_SPLIT[name.split(".", 2)[-1] if name.startswith("layers.") else name]
    pieces = self._pieces(name)
    if split is None:
      for file, piece in zip(self.files[1:], pieces[1:], strict=True):
        if not torch.equal(piece, pieces[0]):
          raise ValueError(f"ranks disagree on the replicated tensor {name!r}: {file.name} "
                           f"differs from {self.files[0].name}; the files in {self.directory} "
                           "come from different checkpoints: re-download them")
      joined = pieces[0]
    else:
      joined = torch.cat(pieces, dim=split) if len(pieces) > 1 else pieces[0]
    return joined.to(torch.float32).numpy()

  def model_config(self) -> ModelConfig:
    p, source = self.params, self.params_file
    if p.get("n_kv_heads") not in (None, p["n_heads"]):
      raise ValueError(f"{source}: grouped-query attention (n_kv_heads={p['n_kv_heads']} != "
                       f"n_heads={p['n_heads']}) is not LLaMA-1's and this model lacks it")
    if p.get("use_scaled_rope"):
      raise ValueError(f"{source}: scaled RoPE (use_scaled_rope) is not LLaMA-1's")
    vocab, dim = self.shape("tok_embeddings.weight")
    if dim != p["dim"]:
      raise ValueError(f"{source} says dim={p['dim']}, but tok_embeddings.weight in "
                       f"{len(self.files)} ranks has dim {dim}: params.json belongs to another "
                       "model")
    if p.get("vocab_size", -1) not in (-1, vocab):
      raise ValueError(f"{source} says vocab_size={p['vocab_size']}, but tok_embeddings.weight "
                       f"has {vocab} rows")
    ffn = self.shape("layers.0.feed_forward.w1.weight")[0]
    if "multiple_of" in p:
      rule = _meta_ffn_dim(p["dim"], p["multiple_of"], p.get("ffn_dim_multiplier"))
      if rule != ffn:
        warnings.warn(f"{source}: dim={p['dim']} and multiple_of={p['multiple_of']} give a "
                      f"feed-forward size of {rule} by Meta's rule, but the weights have {ffn} "
                      f"(layers.0.feed_forward.w1.weight); using {ffn}. Check that params.json "
                      "belongs to these weights.", stacklevel=2)
    return ModelConfig(vocab_size=vocab, dim=dim, n_layers=p["n_layers"], n_heads=p["n_heads"],
                       ffn_dim=ffn, context_length=p.get("max_seq_len", 2048),
                       norm_eps=p.get("norm_eps", 1e-6),
                       rope_theta=float(p.get("rope_theta", 10000.0)))


_META_SPLIT = {t.meta.removeprefix("layers.{i}."): t.meta_split
               for t in _GLOBAL_TENSORS + _LAYER_TENSORS}


def _natural(name: str) -> list:
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --- orbax runs --------------------------------------------------------------------------------


def _run_directory(path: Path) -> tuple[Path, int | None]:
  """(run directory, step or None for the latest) for a --workdir or one of its checkpoints."""
  if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
    return path, None
  if path.name.isdigit() and path.parent.name == "checkpoints":
    return path.parent.parent, int(path.name)
  raise FileNotFoundError(
      f"{path} is neither a Hugging Face LLaMA directory (config.json, *.safetensors, "
      "tokenizer.model) nor a training run directory (config.json, checkpoints/) or one of its "
      "checkpoints/<step> directories")


def _run_tokenizer(run: Path, config: config_dict.ConfigDict) -> Path:
  """A run's tokenizer: its data.tokenizer (a relative path is looked up in the run directory,
  then in the working directory, where training was started), else <run>/tokenizer.model."""
  named = (config.get("data") or {}).get("tokenizer")
  candidates = []
  if named:
    named = Path(named)
    candidates = [named] if named.is_absolute() else [run / named, named]
  candidates.append(run / "tokenizer.model")
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  said = f"names data.tokenizer={str(named)!r}" if named else "names no data.tokenizer"
  raise FileNotFoundError(f"{run / 'config.json'} {said}, and none of "
                          f"{[str(c) for c in candidates]} exists: give --tokenizer=FILE (the "
                          "SentencePiece model the checkpoint was trained with)")


def _host_params(run: Path, model_config: ModelConfig, step: int | None) -> tuple[dict, int]:
  """A run's parameters (nested dict of numpy arrays in model.param_dtype) in host memory."""
  abstract = nnx.state(abstract_model(model_config), nnx.Param)
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  params, step = restore_params(run, with_shardings(abstract, jax.tree.map(lambda _: cpu,
                                                                            abstract)), step)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(params)), step


# --- loading any checkpoint for inference ----------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
  """A checkpoint's parameters placed on a mesh, with its config and tokenizer."""

  model_config: ModelConfig
  params: nnx.State  # placed with the shardings of `mesh_rules`
  tokenizer: Tokenizer
  mesh_rules: MeshRules
  description: str  # what was loaded, for results files


def load_model(ckpt: str | Path, *, tokenizer: str | Path | None = None, dtype: str | None = None,
               mesh_config: dict | None = None,
               devices: Sequence[jax.Device] | None = None) -> LoadedModel:
  """A Hugging Face LLaMA directory or a llama_jax run (its latest or a given checkpoint) with
  the parameters sharded over a mesh (default: FSDP over every device), for inference.

  Only the parameters of a run's checkpoint are read (not the optimizer state), checksums
  verified. `dtype` overrides the compute dtype. A run's tokenizer is its data.tokenizer (a
  relative path: in the run directory, else the working directory), else <run>/tokenizer.model.
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
    tokenizer_file = Path(tokenizer) if tokenizer else _run_tokenizer(run, config)
    abstract = nnx.state(abstract_model(model_config), nnx.Param)
    params, step = restore_params(run, with_shardings(abstract,
                                                      param_shardings(abstract, mesh_rules)), step)
    description = f"llama_jax run {run}, step {step}"
  if not Path(tokenizer_file).is_file():
    raise FileNotFoundError(f"tokenizer {tokenizer_file} not found: give --tokenizer=FILE (the "
                            "SentencePiece model the checkpoint was trained with)")
  return LoadedModel(model_config, params, Tokenizer(tokenizer_file), mesh_rules, description)


def define_model_flags() -> Callable[[], LoadedModel]:
  """Defines the absl flags of the commands that load a model for inference (--ckpt, --tokenizer,
  --dtype, --mesh) and returns the function that loads what they name."""
  from absl import flags

  from llama_jax.sharding import parse_mesh

  ckpt = flags.DEFINE_string(
      "ckpt", None, "a training or converted run directory (or its checkpoints/STEP), or a "
      "Hugging Face LLaMA directory with tokenizer.model", required=True)
  tokenizer = flags.DEFINE_string(
      "tokenizer", None, "SentencePiece model (default: the run's data.tokenizer, else "
      "tokenizer.model in the --ckpt directory)")
  dtype = flags.DEFINE_string("dtype", None, "compute dtype (default: the checkpoint's)")
  mesh = flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1", "device mesh: rows are split "
                             "over data x fsdp, the model over fsdp and tensor (-1: the rest)")
  return lambda: load_model(ckpt.value, tokenizer=tokenizer.value, dtype=dtype.value,
                            mesh_config=parse_mesh(mesh.value))


# --- conversions -------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float16")
_ORBAX_FILES = ("config.json", "tokenizer.model", "checkpoints")
_HF_FILES = ("config.json", "tokenizer.model", "model.safetensors", "model.safetensors.index.json",
             "model-*-of-*.safetensors")


def _check_destination(dst: Path, force: bool, sources: Sequence[Path], ours: Sequence[str]):
  """Refuses a destination that is a source, or not empty without --force (checked before any
  reading, so that a long conversion does not fail at its end)."""
  for source in sources:
    if dst.resolve() == source.resolve() or dst.resolve() in source.resolve().parents:
      raise ValueError(f"destination {dst} is (or holds) the source {source}; choose another")
  if dst.exists() and not dst.is_dir():
    raise FileExistsError(f"destination {dst} exists and is not a directory")
  if dst.is_dir() and any(dst.iterdir()) and not force:
    raise FileExistsError(f"destination {dst} is not empty; choose another, or give --force to "
                          f"replace what a conversion writes there ({', '.join(ours)}; other "
                          "files are kept)")


def _clear_destination(dst: Path, ours: Sequence[str]) -> None:
  dst.mkdir(parents=True, exist_ok=True)
  for pattern in ours:
    for path in dst.glob(pattern):
      if path.is_dir():
        shutil.rmtree(path)
      else:
        path.unlink()


def _source_tokenizer(tokenizer: str | Path | None, candidates: Sequence[Path],
                      source: Path) -> Path:
  if tokenizer:
    found = Path(tokenizer)
    if not found.is_file():
      raise FileNotFoundError(f"--tokenizer={tokenizer} does not exist")
  elif not (found := next((c for c in candidates if c.is_file()), None)):
    raise FileNotFoundError(f"no tokenizer.model for {source} (looked for "
                            f"{[str(c) for c in candidates]}): give --tokenizer=FILE, the "
                            "SentencePiece model these weights were trained with")
  return found


def _check_tokenizer(tokenizer_file: Path, config: ModelConfig) -> None:
  vocab = Tokenizer(tokenizer_file).vocab_size  # also checks it is a SentencePiece model
  if vocab > config.vocab_size:
    warnings.warn(f"{tokenizer_file} has {vocab} pieces but the model only {config.vocab_size} "
                  "embeddings: is it the tokenizer of these weights?", stacklevel=3)


def _write_run(dst: Path, config: ModelConfig, params: dict, tokenizer_file: Path,
               converted_from: dict, force: bool) -> None:
  state = nnx.state(abstract_model(config), nnx.Param)
  # Orbax saves numpy arrays through an extra copy of each; CPU jax arrays alias the (aligned)
  # numpy memory instead.
  cpu = jax.devices("cpu")[0]
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jax.device_put(a, cpu), params))
  del params
  _clear_destination(dst, _ORBAX_FILES if force else ())
  print(f"writing {dst / 'checkpoints' / '0'}", file=sys.stderr)
  save_params(dst, state, step=0)
  shutil.copyfile(tokenizer_file, dst / "tokenizer.model")
  # config.json last: until it exists, the directory is no run that load_model would read.
  (dst / "config.json").write_text(json.dumps({
      "model": dataclasses.asdict(config), "data": {"tokenizer": "tokenizer.model"},
      "converted_from": converted_from}, indent=2))


def meta_to_orbax(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None,
                  dtype: str = "float32", force: bool = False) -> ModelConfig:
  """Meta's LLaMA release (params.json, consolidated.NN.pth) -> an orbax run directory."""
  src, dst = Path(src), Path(dst)
  _check_destination(dst, force, [src], _ORBAX_FILES)
  if not src.is_dir():
    raise FileNotFoundError(f"{src} is not a directory (expected Meta's LLaMA release, e.g. "
                            "llama/7B, holding params.json and consolidated.00.pth ...)")
  meta = _MetaCheckpoint(src)
  tokenizer_file = _source_tokenizer(tokenizer, [src / "tokenizer.model",
                                                 src.parent / "tokenizer.model"], src)
  config = dataclasses.replace(meta.model_config(), param_dtype=dtype)
  _check_tokenizer(tokenizer_file, config)
  params = _params_from_torch_layout(meta.read, repr, config, dtype, str(src))
  del meta
  _write_run(dst, config, params, tokenizer_file,
             {"format": "meta", "path": str(src.resolve())}, force)
  return config


def hf_to_orbax(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None,
                dtype: str = "float32", force: bool = False) -> ModelConfig:
  """A Hugging Face LLaMA directory -> an orbax run directory."""
  src, dst = Path(src), Path(dst)
  _check_destination(dst, force, [src], _ORBAX_FILES)
  config = dataclasses.replace(_read_hf_config(src), param_dtype=dtype)
  tokenizer_file = _source_tokenizer(tokenizer, [src / "tokenizer.model"], src)
  _check_tokenizer(tokenizer_file, config)
  params = params_from_hf(_read_safetensors(src), config, str(src), dtype)
  _write_run(dst, config, params, tokenizer_file,
             {"format": "hugging_face", "path": str(src.resolve())}, force)
  return config


def _parse_size(size: str | int) -> int:
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, re.IGNORECASE)
  if not match:
    raise ValueError(f"--max_shard_size={size!r}: give bytes or e.g. 500MB, 5GB, 2GiB")
  number, unit = float(match.group(1)), (match.group(2) or "B").upper()
  scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
           "GIB": 2**30}[unit]
  return int(number * scale)


def orbax_to_hf(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None,
                dtype: str | None = None, force: bool = False,
                max_shard_size: str | int = "5GB") -> ModelConfig:
  """An orbax run (its newest checkpoint) or one of its checkpoints/<step> -> a Hugging Face
  LLaMA directory; `dtype` defaults to the run's model.param_dtype."""
  src, dst = Path(src), Path(dst)
  run, step = _run_directory(src)
  _check_destination(dst, force, [src, run], _HF_FILES)
  run_config = config_dict.ConfigDict(json.loads((run / "config.json").read_text()))
  config = ModelConfig.from_dict(run_config.model)
  tokenizer_file = Path(tokenizer) if tokenizer else _run_tokenizer(run, run_config)
  if not tokenizer_file.is_file():
    raise FileNotFoundError(f"--tokenizer={tokenizer} does not exist")
  dtype = jnp.dtype(dtype or config.param_dtype).name
  limit = _parse_size(max_shard_size)
  print(f"reading {run} (step {'newest' if step is None else step})", file=sys.stderr)
  params, step = _host_params(run, config, step)

  def hf_tensor(tensor: _Tensor, layer: int | None) -> np.ndarray:
    w = params
    for key in tensor.path:
      w = w[key]
    w = _from_ours(w if layer is None else w[layer], tensor.layout)
    if tensor.path in _ROPE_PERMUTED:
      w = _permute_rope_rows(w, config.n_heads)
    return np.ascontiguousarray(w.astype(jnp.dtype(dtype), copy=False))

  # Shards planned from sizes alone (as transformers does: a new file when the next tensor would
  # overflow the limit), then written one at a time so that only one shard is ever copied.
  itemsize = jnp.dtype(dtype).itemsize
  shards: list[list[tuple[_Tensor, int | None]]] = [[]]
  shard_bytes, total = 0, 0
  for tensor, layer in _tensors(config.n_layers):
    w = params
    for key in tensor.path:
      w = w[key]
    size = (w.size if layer is None else w[0].size) * itemsize
    if shards[-1] and shard_bytes + size > limit:
      shards.append([])
      shard_bytes = 0
    shards[-1].append((tensor, layer))
    shard_bytes += size
    total += size

  from safetensors.numpy import save_file

  _clear_destination(dst, _HF_FILES if force else ())
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
  weight_map = {}
  for name, shard in zip(tqdm(names, desc=f"writing {dst}", unit="file"), shards, strict=True):
    tensors = {tensor.hf.format(i=layer): hf_tensor(tensor, layer) for tensor, layer in shard}
    save_file(tensors, dst / name, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, name))
    del tensors
  if len(shards) > 1:
    (dst / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  shutil.copyfile(tokenizer_file, dst / "tokenizer.model")
  (dst / "config.json").write_text(json.dumps(hf_config_from_model(config, dtype), indent=2))
  return config


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m llama_jax.convert",
      description="Convert LLaMA checkpoints between Meta's release, Hugging Face directories "
                  "and llama_jax orbax runs (see the module docstring for the formats).")
  commands = parser.add_subparsers(dest="command", required=True)
  helps = {
      "meta-to-orbax": "SRC: Meta's release directory (params.json, consolidated.NN.pth)",
      "hf-to-orbax": "SRC: a Hugging Face LLaMA directory (config.json, *.safetensors)",
      "orbax-to-hf": "SRC: a llama_jax run directory (its newest checkpoint) or "
                     "RUN/checkpoints/STEP",
  }
  for name, help_text in helps.items():
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument("src", metavar="SRC")
    command.add_argument("dst", metavar="DST", help="output directory (created)")
    command.add_argument("--tokenizer", metavar="FILE",
                         help="SentencePiece model to copy (default: found beside SRC)")
    command.add_argument("--dtype", choices=_DTYPES,
                         default=None if name == "orbax-to-hf" else "float32",
                         help="dtype of the stored weights (default: " + (
                             "the run's model.param_dtype)" if name == "orbax-to-hf"
                             else "float32, bit-exact)"))
    command.add_argument("--force", action="store_true",
                         help="replace the converted files in a non-empty DST")
    if name == "orbax-to-hf":
      command.add_argument("--max_shard_size", default="5GB",
                           help="split model.safetensors into files of at most this size "
                                "(default 5GB)")
  args = parser.parse_args(argv)
  common = dict(tokenizer=args.tokenizer, dtype=args.dtype, force=args.force)
  if args.command == "meta-to-orbax":
    config = meta_to_orbax(args.src, args.dst, **common)
  elif args.command == "hf-to-orbax":
    config = hf_to_orbax(args.src, args.dst, **common)
  else:
    config = orbax_to_hf(args.src, args.dst, max_shard_size=args.max_shard_size, **common)
  print(f"wrote {args.dst} ({_describe(config)})")


if __name__ == "__main__":
  try:
    main()
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, CorruptCheckpoint) as error:
    sys.exit(f"error: {error.args[0] if error.args else error}")
