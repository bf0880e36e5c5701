"""Converting checkpoints between Meta's LLaMA release, Hugging Face LLaMA directories and our
orbax runs (the formats: llama_jax.formats).

    python -m llama_jax.convert meta-to-orbax SRC DST [--tokenizer=FILE] [--dtype=D] [--force]
    python -m llama_jax.convert hf-to-orbax   SRC DST [--tokenizer=FILE] [--dtype=D] [--force]
    python -m llama_jax.convert orbax-to-hf   SRC DST [--tokenizer=FILE] [--dtype=D] [--force]
                                              [--max_shard_size=5GB]

An orbax run is what training writes and `llama_jax.inference.load_model` / `--ckpt` read:
  DST/config.json        {"model": ModelConfig fields, "data": {"tokenizer": "tokenizer.model"},
                          "converted_from": {...}}
  DST/tokenizer.model    a copy of the SentencePiece model
  DST/checkpoints/0/     an orbax step with item `state` = {"params": the parameter tree} and its
                          CRC-32 tables (llama_jax.checkpoint)
A run's relative data.tokenizer is looked up in the run directory first, so the directory can be
moved. model.param_dtype is the stored dtype (--dtype, default float32, so that round trips are
bit-exact). Meta's tokenizer.model is looked for in SRC, then in SRC's parent (where Meta's
download puts it).

Conversions hold about one copy of the weights in host memory: tensors are read one at a time
(safetensors and .pth files memory-mapped) into preallocated stacked arrays, and written shard by
shard.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from llama_jax.checkpoint import CorruptCheckpoint, restore_params, save_params
from llama_jax.formats.hf import (
    SafetensorsDirectory,
    hf_config_from_model,
    params_from_hf,
    read_hf_config,
    write_weights,
)
from llama_jax.formats.layout import describe, params_from_torch_layout
from llama_jax.formats.meta import MetaCheckpoint
from llama_jax.inference import read_run_config, run_directory, run_tokenizer
from llama_jax.model import ModelConfig, abstract_model
from llama_jax.sharding import with_shardings
from llama_jax.tokenizer import Tokenizer

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


def _host_params(run: Path, model_config: ModelConfig, step: int | None) -> tuple[dict, int]:
  """A run's parameters (nested dict of numpy arrays in model.param_dtype) in host memory."""
  abstract = nnx.state(abstract_model(model_config), nnx.Param)
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  params, step = restore_params(run, with_shardings(abstract, jax.tree.map(lambda _: cpu,
                                                                            abstract)), step)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(params)), step


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
  meta = MetaCheckpoint(src)
  tokenizer_file = _source_tokenizer(tokenizer, [src / "tokenizer.model",
                                                 src.parent / "tokenizer.model"], src)
  config = dataclasses.replace(meta.model_config(), param_dtype=dtype)
  _check_tokenizer(tokenizer_file, config)
  params = params_from_torch_layout(meta.read, repr, config, dtype, str(src))
  del meta
  _write_run(dst, config, params, tokenizer_file,
             {"format": "meta", "path": str(src.resolve())}, force)
  return config


def hf_to_orbax(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None,
                dtype: str = "float32", force: bool = False) -> ModelConfig:
  """A Hugging Face LLaMA directory -> an orbax run directory."""
  src, dst = Path(src), Path(dst)
  _check_destination(dst, force, [src], _ORBAX_FILES)
  config = dataclasses.replace(read_hf_config(src), param_dtype=dtype)
  tokenizer_file = _source_tokenizer(tokenizer, [src / "tokenizer.model"], src)
  _check_tokenizer(tokenizer_file, config)
  params = params_from_hf(SafetensorsDirectory(src), config, str(src), dtype)
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
  run, step = run_directory(src)
  _check_destination(dst, force, [src, run], _HF_FILES)
  run_config = read_run_config(run)
  config = ModelConfig.from_dict(run_config.model)
  tokenizer_file = Path(tokenizer) if tokenizer else run_tokenizer(run, run_config)
  if not tokenizer_file.is_file():
    raise FileNotFoundError(f"--tokenizer={tokenizer} does not exist")
  dtype = jnp.dtype(dtype or config.param_dtype).name
  limit = _parse_size(max_shard_size)
  print(f"reading {run} (step {'newest' if step is None else step})", file=sys.stderr)
  params, step = _host_params(run, config, step)
  _clear_destination(dst, _HF_FILES if force else ())
  write_weights(dst, params, config, dtype, limit)
  shutil.copyfile(tokenizer_file, dst / "tokenizer.model")
  (dst / "config.json").write_text(json.dumps(hf_config_from_model(config, dtype), indent=2))
  return config


# --- command line ------------------------------------------------------------------------------

_COMMANDS = {
    "meta-to-orbax": "SRC: Meta's release directory (params.json, consolidated.NN.pth)",
    "hf-to-orbax": "SRC: a Hugging Face LLaMA directory (config.json, *.safetensors)",
    "orbax-to-hf": "SRC: a llama_jax run directory (its newest checkpoint) or "
                   "RUN/checkpoints/STEP",
}
_USAGE = ("usage: python -m llama_jax.convert {" + ",".join(_COMMANDS) + "} SRC DST [flags]\n" +
          "".join(f"  {name:14}{help_text}\n" for name, help_text in _COMMANDS.items()) +
          "  DST: the output directory (created)")


def _command_flags() -> flags.FlagValues:
  """The command's flags, in a FlagValues of their own: `main` may run more than once in one
  process, beside other commands' flags (their --tokenizer and --dtype mean other things)."""
  command_flags = flags.FlagValues()
  flags.DEFINE_string("tokenizer", None, "SentencePiece model to copy (default: found beside SRC)",
                      flag_values=command_flags)
  flags.DEFINE_enum("dtype", None, _DTYPES, "dtype of the stored weights (default: float32, "
                    "bit-exact; orbax-to-hf: the run's model.param_dtype)",
                    flag_values=command_flags)
  flags.DEFINE_bool("force", False, "replace the converted files in a non-empty DST",
                    flag_values=command_flags)
  flags.DEFINE_string("max_shard_size", "5GB", "orbax-to-hf: split model.safetensors into files "
                      "of at most this size", flag_values=command_flags)
  flags.DEFINE_bool("help", False, "show this help", short_name="h", flag_values=command_flags)
  return command_flags


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the command line `argv` (what follows the program's name; default: sys.argv[1:])."""
  command_flags = _command_flags()
  try:
    # absl parses the flags wherever they stand and leaves the positional arguments.
    positional = command_flags(["convert", *(sys.argv[1:] if argv is None else argv)])[1:]
  except flags.Error as error:
    raise app.UsageError(str(error)) from None
  if command_flags.help:
    print(f"{_USAGE}\n\nflags:\n{command_flags.get_help(include_special_flags=False)}")
    return
  if len(positional) != 3 or positional[0] not in _COMMANDS:
    raise app.UsageError(f"expected a command of {', '.join(_COMMANDS)}, then SRC and DST; got "
                         f"{positional}")
  command, src, dst = positional
  if command != "orbax-to-hf" and command_flags["max_shard_size"].present:
    raise app.UsageError("--max_shard_size applies to orbax-to-hf only")
  options = {"tokenizer": command_flags.tokenizer, "force": command_flags.force}
  if command_flags.dtype:  # else each conversion's default
    options["dtype"] = command_flags.dtype
  if command == "meta-to-orbax":
    config = meta_to_orbax(src, dst, **options)
  elif command == "hf-to-orbax":
    config = hf_to_orbax(src, dst, **options)
  else:
    config = orbax_to_hf(src, dst, max_shard_size=command_flags.max_shard_size, **options)
  print(f"wrote {dst} ({describe(config)})")


if __name__ == "__main__":
  try:
    main()
  except app.UsageError as error:
    sys.exit(f"{_USAGE}\nerror: {error}")
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, CorruptCheckpoint) as error:
    sys.exit(f"error: {error.args[0] if error.args else error}")
