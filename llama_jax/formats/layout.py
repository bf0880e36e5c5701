"""One table of tensor names and layouts for Meta's, Hugging Face's and our checkpoints, and the
conversion of torch-layout tensors into our parameter tree.

Torch weights are [out, in]; ours are [in, out] with the head axes split out (llama_jax.model).
Meta's q/k rows are in our RoPE order (interleaved pairs); Hugging Face's rotate halves, see
`unpermute_rope_rows`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from llama_jax.model import ModelConfig, abstract_model


@dataclasses.dataclass(frozen=True)
class Tensor:
  path: tuple[str, ...]  # in our parameter tree; block tensors are stacked on a leading layer axis
  meta: str  # Meta's name ("{i}": the layer)
  hf: str  # Hugging Face's name
  layout: str  # how the torch [out, in] matrix maps onto ours, see _to_ours
  meta_split: int | None  # the dim Meta's model-parallel ranks split; None: replicated


GLOBAL_TENSORS = (
    Tensor(("embedding",), "tok_embeddings.weight", "model.embed_tokens.weight", "same", 1),
    Tensor(("norm", "scale"), "norm.weight", "model.norm.weight", "same", None),
    Tensor(("output",), "output.weight", "lm_head.weight", "transpose", 0),
)
LAYER_TENSORS = (
    Tensor(("layers", "attention", "wq"), "layers.{i}.attention.wq.weight",
           "model.layers.{i}.self_attn.q_proj.weight", "in_heads", 0),
    Tensor(("layers", "attention", "wk"), "layers.{i}.attention.wk.weight",
           "model.layers.{i}.self_attn.k_proj.weight", "in_heads", 0),
    Tensor(("layers", "attention", "wv"), "layers.{i}.attention.wv.weight",
           "model.layers.{i}.self_attn.v_proj.weight", "in_heads", 0),
    Tensor(("layers", "attention", "wo"), "layers.{i}.attention.wo.weight",
           "model.layers.{i}.self_attn.o_proj.weight", "out_heads", 1),
    Tensor(("layers", "feed_forward", "w1"), "layers.{i}.feed_forward.w1.weight",
           "model.layers.{i}.mlp.gate_proj.weight", "transpose", 0),
    Tensor(("layers", "feed_forward", "w2"), "layers.{i}.feed_forward.w2.weight",
           "model.layers.{i}.mlp.down_proj.weight", "transpose", 1),
    Tensor(("layers", "feed_forward", "w3"), "layers.{i}.feed_forward.w3.weight",
           "model.layers.{i}.mlp.up_proj.weight", "transpose", 0),
    Tensor(("layers", "attention_norm", "scale"), "layers.{i}.attention_norm.weight",
           "model.layers.{i}.input_layernorm.weight", "same", None),
    Tensor(("layers", "ffn_norm", "scale"), "layers.{i}.ffn_norm.weight",
           "model.layers.{i}.post_attention_layernorm.weight", "same", None),
)
ROPE_PERMUTED = {("layers", "attention", "wq"), ("layers", "attention", "wk")}


def every_tensor(n_layers: int) -> Iterator[tuple[Tensor, int | None]]:
  """Every tensor of a model with its layer (None for the global ones), in Hugging Face's order."""
  yield GLOBAL_TENSORS[0], None
  for i in range(n_layers):
    for tensor in LAYER_TENSORS:
      yield tensor, i
  yield from ((tensor, None) for tensor in GLOBAL_TENSORS[1:])


def _to_ours(w: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
  """A torch-layout tensor in our layout `shape` (one layer's, for block tensors)."""
  if layout == "same":
    return w
  return w.T.reshape(shape)  # in_heads: [d, h, hd]; out_heads: [h, hd, d]; transpose: 2-D


def from_ours(w: np.ndarray, layout: str) -> np.ndarray:
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


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Hugging Face [heads * head_dim, dim] q/k rows (halves) -> Meta's order (interleaved pairs)."""
  rows, dim = w.shape
  return w.reshape(n_heads, 2, rows // n_heads // 2, dim).swapaxes(1, 2).reshape(rows, dim)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Meta's q/k rows (interleaved pairs) -> Hugging Face's order (halves)."""
  rows, dim = w.shape
  return w.reshape(n_heads, rows // n_heads // 2, 2, dim).swapaxes(1, 2).reshape(rows, dim)


def _keystr(path: tuple[str, ...]) -> str:
  return "".join(f"[{key!r}]" for key in path)


def describe(config: ModelConfig) -> str:
  return (f"vocab {config.vocab_size}, dim {config.dim}, {config.n_layers} layers, "
          f"{config.n_heads} heads, ffn {config.ffn_dim}")


def params_from_torch_layout(read: Callable[[str], np.ndarray], name_of: Callable[[str], str],
                             config: ModelConfig, dtype, source: str) -> dict:
  """Our parameter tree (nested dict of numpy arrays of `dtype`) from torch-layout tensors with
  Meta's q/k row order: read(meta_name); name_of(meta_name) is the name errors show.

  Block tensors go straight into preallocated stacked arrays, so besides the result only one
  tensor is held at a time.
  """
  dtype = np.dtype(jnp.dtype(dtype))
  expected = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
  params: dict = {}
  for tensor in GLOBAL_TENSORS + LAYER_TENSORS:
    node = params
    for key in tensor.path[:-1]:
      node = node.setdefault(key, {})
    leaf = expected
    for key in tensor.path:
      leaf = leaf[key]
    node[tensor.path[-1]] = _aligned_empty(leaf.shape, dtype)

  def convert(tensor: Tensor, layer: int | None) -> None:
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
                       f"{where} of this model ({describe(config)}) needs {want}")
    if layer is None:
      target[...] = _to_ours(w, tensor.layout, ours)
    else:
      target[layer] = _to_ours(w, tensor.layout, ours)

  for tensor in GLOBAL_TENSORS:
    convert(tensor, None)
  for i in tqdm(range(config.n_layers), desc=f"converting {source}", unit="layer"):
    for tensor in LAYER_TENSORS:
      convert(tensor, i)
  return params


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
  """np.empty on a 64-byte boundary: jax then places it on the CPU without copying it."""
  size = int(np.prod(shape)) * dtype.itemsize
  buffer = np.empty(size + alignment, np.uint8)
  start = -buffer.ctypes.data % alignment
  return buffer[start:start + size].view(dtype).reshape(shape)
