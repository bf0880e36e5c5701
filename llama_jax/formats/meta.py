"""Meta's LLaMA release: params.json and consolidated.NN.pth, one file per model-parallel rank
(fairscale): wq, wk, wv, w1, w3 and output split along their output rows, wo and w2 along their
input columns, the token embedding along its embedding dim, norms replicated. Files are read with
torch.load(weights_only=True, mmap=True): a file that pickles anything but tensors is refused,
never executed."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llama_jax.formats.layout import GLOBAL_TENSORS, LAYER_TENSORS, every_tensor
from llama_jax.model import ModelConfig

# Buffers some checkpoints carry that our model derives instead.
_DERIVED_TENSORS = ("rope.freqs",)


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


def _ffn_dim(dim: int, multiple_of: int, multiplier: float | None) -> int:
  """Meta's rule for the SwiGLU hidden size: 2/3 of 4 * dim (times ffn_dim_multiplier where
  params.json gives one), rounded up to a multiple of multiple_of."""
  hidden = int(2 * 4 * dim / 3)
  if multiplier is not None:
    hidden = int(multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MetaCheckpoint:
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
    expected = {t.meta.format(i=i) for t, i in every_tensor(self.params["n_layers"])}
    for file, shard in zip(self.files, self.shards, strict=True):
      names = set(shard) - set(_DERIVED_TENSORS)
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
    split = _split_dim(name)
    shape = list(self.shards[0][name].shape)
    if split is not None:
      shape[split] *= len(self.shards)
    return tuple(shape)

  def read(self, name: str) -> np.ndarray:
    """A tensor joined across ranks as float32 numpy; the ranks' pieces are dropped."""
    torch = _torch()
    split = _split_dim(name)
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
      rule = _ffn_dim(p["dim"], p["multiple_of"], p.get("ffn_dim_multiplier"))
      if rule != ffn:
        warnings.warn(f"{source}: dim={p['dim']} and multiple_of={p['multiple_of']} give a "
                      f"feed-forward size of {rule} by Meta's rule, but the weights have {ffn} "
                      f"(layers.0.feed_forward.w1.weight); using {ffn}. Check that params.json "
                      "belongs to these weights.", stacklevel=2)
    return ModelConfig(vocab_size=vocab, dim=dim, n_layers=p["n_layers"], n_heads=p["n_heads"],
                       ffn_dim=ffn, context_length=p.get("max_seq_len", 2048),
                       norm_eps=p.get("norm_eps", 1e-6),
                       rope_theta=float(p.get("rope_theta", 10000.0)))


_SPLIT_DIMS = {t.meta.removeprefix("layers.{i}."): t.meta_split
               for t in GLOBAL_TENSORS + LAYER_TENSORS}


def _split_dim(name: str) -> int | None:
  """The dim Meta's ranks split tensor `name` along; None: replicated."""
  return _SPLIT_DIMS[name.split(".", 2)[-1] if name.startswith("layers.") else name]


def _natural(name: str) -> list:
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
