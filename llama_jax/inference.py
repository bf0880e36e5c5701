"""A checkpoint on a mesh for inference, and what scoring (llama_jax.eval) and generation
(llama_jax.generate) share.

`load_model` reads a Hugging Face LLaMA directory (llama_jax.formats.hf) or a llama_jax run, a
trained or a converted one (its config.json and the parameters of an orbax checkpoint), and places
the parameters on a mesh. `InferenceModel` is the base of the Scorer and the Generator: the model,
its tokenizer and mesh, and the batch size their fixed shapes use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx
from ml_collections import config_dict

from llama_jax.checkpoint import restore_params
from llama_jax.formats.hf import from_pretrained
from llama_jax.model import ModelConfig, abstract_model
from llama_jax.sharding import (
    MeshRules,
    batch_ways,
    logical_rules,
    make_mesh,
    param_shardings,
    parse_mesh,
    with_shardings,
)
from llama_jax.tokenizer import Tokenizer

# --- orbax runs --------------------------------------------------------------------------------


def run_directory(path: Path) -> tuple[Path, int | None]:
  """(run directory, step or None for the latest) for a --workdir or one of its checkpoints."""
  if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
    return path, None
  if path.name.isdigit() and path.parent.name == "checkpoints":
    return path.parent.parent, int(path.name)
  raise FileNotFoundError(
      f"{path} is neither a Hugging Face LLaMA directory (config.json, *.safetensors, "
      "tokenizer.model) nor a training run directory (config.json, checkpoints/) or one of its "
      "checkpoints/<step> directories")


def read_run_config(run: Path) -> config_dict.ConfigDict:
  """A run's config.json: training's, or a conversion's (model, data.tokenizer, converted_from)."""
  return config_dict.ConfigDict(json.loads((run / "config.json").read_text()))


def run_tokenizer(run: Path, config: config_dict.ConfigDict) -> Path:
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


# --- loading any checkpoint --------------------------------------------------------------------


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
    run, step = run_directory(path)
    config = read_run_config(run)
    model_config = ModelConfig.from_dict(config.model)
    if dtype is not None:
      model_config = dataclasses.replace(model_config, dtype=jnp.dtype(dtype).name)
    tokenizer_file = Path(tokenizer) if tokenizer else run_tokenizer(run, config)
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


# --- what the Scorer and the Generator share ---------------------------------------------------


MIN_BUCKET = 32


def bucket_lengths(context_length: int) -> list[int]:
  """The padded lengths rows are scored (and prompts generated) at: powers of two from 32 and
  1.5 times each (32, 48, 64, 96, ...: at most a third of a row is padding), and the context
  length."""
  lengths, length = [], MIN_BUCKET
  while length < context_length:
    lengths += [n for n in (length, length * 3 // 2) if n < context_length]
    length *= 2
  return lengths + [context_length]


@dataclasses.dataclass
class InferenceModel:
  """A model, its tokenizer and a mesh, run in batches of a fixed number of rows."""

  model_config: ModelConfig
  params: nnx.State  # placed with the shardings of `mesh_rules`
  tokenizer: Tokenizer
  mesh_rules: MeshRules
  batch_size: int = 16  # rows per call; rounded up to a multiple of the mesh's batch ways
  description: str = ""  # what was loaded, for results files

  def __post_init__(self):
    ways = batch_ways(self.mesh_rules.mesh)
    self.batch_size = -(-self.batch_size // ways) * ways
    self.graphdef = nnx.graphdef(abstract_model(self.model_config))

  @classmethod
  def from_loaded(cls, loaded: LoadedModel, batch_size: int = 16) -> Self:
    return cls(loaded.model_config, loaded.params, loaded.tokenizer, loaded.mesh_rules,
               batch_size, loaded.description)
