"""The one config schema, shared by every file in configs/, and command-line config handling.

A config file defines `get_config()` returning the ConfigDict below with its size filled in; a run
is `--config=configs/7b.py` plus overrides such as `--config.model.remat=full`. Values are the
paper's (Touvron et al. 2023, section 2 and Table 2) unless a comment names another source.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_dict


def base_config() -> config_dict.ConfigDict:
  """Settings shared by every model size; size-specific fields are typed placeholders."""
  config = config_dict.ConfigDict()

  config.model = config_dict.ConfigDict()
  config.model.vocab_size = 32000  # SentencePiece BPE vocabulary
  config.model.dim = config_dict.placeholder(int)
  config.model.n_layers = config_dict.placeholder(int)
  config.model.n_heads = config_dict.placeholder(int)
  # SwiGLU hidden size: 2/3 * 4 * dim rounded up to a multiple of 256 (Meta's model code).
  config.model.ffn_dim = config_dict.placeholder(int)
  config.model.context_length = 2048
  config.model.norm_eps = 1e-6  # Meta's model code
  config.model.rope_theta = 10000.0
  config.model.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
  config.model.param_dtype = "float32"
  config.model.remat = "save_linear"  # none | full | save_linear (paper 2.4)
  config.model.attention = "auto"  # pallas on GPU, xla elsewhere (llama_jax.attention)

  config.optim = config_dict.ConfigDict()
  config.optim.peak_lr = config_dict.placeholder(float)
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.eps = 1e-8  # not in the paper; PyTorch's and optax's AdamW default
  config.optim.weight_decay = 0.1
  config.optim.grad_clip_norm = 1.0
  config.optim.warmup_steps = 2000
  config.optim.final_lr_ratio = 0.1  # cosine decay to 10% of the peak

  # Device mesh ('data', 'fsdp', 'tensor'); -1 takes the devices the other axes leave. The
  # default is pure FSDP (ZeRO-3) over every device; llama_jax.sharding explains each axis.
  config.mesh = config_dict.ConfigDict()
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = 1
  config.mesh.sequence_parallel = True  # Korthikanti et al. 2022; acts only when tensor > 1

  # Training data (llama_jax.data): token shards from preprocessing.tokenize_shards, one
  # directory per source under `dir`, named as preprocessing.run's sources.
  config.data = config_dict.ConfigDict()
  config.data.dir = config_dict.placeholder(str)
  config.data.tokenizer = config_dict.placeholder(str)  # the SentencePiece model of the shards
  # Sampling shares in percent, paper Table 1. Epochs follow from them and each source's size:
  # 1.10 / 1.06 / 0.64 / 2.45 / 2.23 / 1.06 / 1.03 in the paper; a share of 0 leaves a source out.
  config.data.shares = config_dict.ConfigDict({
      "ccnet": 67.0, "c4": 15.0, "github": 4.5, "wikipedia": 4.5, "books": 4.5, "arxiv": 2.5,
      "stackexchange": 2.0})
  config.data.seed = 0  # document shuffling, per source and epoch
  config.data.read_threads = 2  # per source: reading and checking records (ours)
  config.data.prefetch_batches = 2  # global batches packed ahead in a background thread (ours)
  # A bad record (fails its checksum, no whole number of tokens, empty, token id >= vocab_size),
  # named by shard file and record index (ours): "stop" ends the run with that message; "skip"
  # drops the document, warns and counts it (DataIterator.bad_records(), kept in checkpoints).
  # A shard that cannot be opened at all stops the run either way.
  config.data.on_bad_record = "stop"
  # A source read from TensorFlow Datasets instead of data.dir/<source> (ours): set its `name`
  # as TFDS spells it ("c4/en"); its `feature` text is tokenized on the fly with data.tokenizer.
  # `version` None: the newest in data_dir; data_dir None: TFDS's default (~/tensorflow_datasets).
  config.data.tfds = config_dict.ConfigDict({
      source: config_dict.ConfigDict({
          "name": config_dict.placeholder(str), "version": config_dict.placeholder(str),
          "split": "train", "feature": "text", "data_dir": config_dict.placeholder(str)})
      for source in config.data.shares})
  # Random tokens instead of a corpus, for smoke tests and benchmarks without data (ours).
  config.data.synthetic = False

  config.train = config_dict.ConfigDict()
  config.train.batch_size = 2048  # sequences: 2048 x 2048 tokens = 4M tokens per step
  # The run's length: exactly one of these (config files give tokens, as the paper does; a
  # --config.train.steps=N on the command line replaces the file's total_tokens).
  config.train.total_tokens = config_dict.placeholder(float)
  config.train.steps = config_dict.placeholder(int)
  config.train.seed = 0
  # Sequences per micro-batch (gradient accumulation over batch_size / micro_batch_size slices);
  # None: the whole batch at once.
  config.train.micro_batch_size = config_dict.placeholder(int)
  config.train.log_every = 10  # steps between metrics.jsonl records
  # Safety rails (ours; BLOOM's and PaLM's reports of loss spikes): a non-finite loss or gradient
  # skips the update; this many in a row, or a loss above spike_factor x the mean of the last
  # spike_window losses, rolls back to the last checkpoint and skips the offending batches.
  config.train.max_consecutive_skips = 3
  config.train.spike_factor = 2.0
  config.train.spike_window = 100
  config.train.spike_min_history = 20  # losses seen before spikes are looked for

  config.checkpoint = config_dict.ConfigDict()
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep = 3
  config.checkpoint.async_save = True

  # Evaluation during training (the paper's Figure 2): these llama_jax.eval tasks, scored every
  # `every_steps` with the training parameters, logged to metrics.jsonl as eval/TASK/METRIC.
  config.eval = config_dict.ConfigDict()
  config.eval.tasks = ""  # comma-separated task names; empty: no evaluation
  config.eval.every_steps = 1000
  config.eval.data_dir = config_dict.placeholder(str)  # the benchmarks' released files
  config.eval.limit = config_dict.placeholder(int)  # items per task (None: all)
  config.eval.num_fewshot = config_dict.placeholder(int)  # None: the paper's setting per task
  config.eval.batch_size = 16

  # Energy and carbon as the paper's Table 15: measured through NVML on GPUs, else this power.
  config.energy = config_dict.ConfigDict()
  config.energy.watts_per_device = 400.0  # A100 nominal (paper)
  config.energy.pue = 1.1
  config.energy.tco2_per_mwh = 0.385  # US national average carbon intensity (paper)
  return config


def total_steps(config) -> int:
  """Optimizer steps in the run: train.steps, or train.total_tokens / tokens per step."""
  train = config["train"]
  if (train["steps"] is None) == (train["total_tokens"] is None):
    raise ValueError(f"give exactly one of train.steps ({train['steps']}) and train.total_tokens "
                     f"({train['total_tokens']}) for the run's length")
  if train["steps"] is not None:
    if train["steps"] < 1:
      raise ValueError(f"train.steps={train['steps']}: must be at least 1")
    return train["steps"]
  return max(1, round(train["total_tokens"] / tokens_per_step(config)))


def tokens_per_step(config) -> int:
  return config["train"]["batch_size"] * config["model"]["context_length"]


def load_config_file(path: str | Path) -> config_dict.ConfigDict:
  """Runs `get_config()` of a config file given by path."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"_llama_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path} defines no get_config() function")
  return module.get_config()


def _unknown_override(argv: list[str], flag_name: str) -> str | None:
  """Describes the first `--config.KEY=...` in argv whose KEY the config file does not have."""
  config_file = None
  for i, arg in enumerate(argv):
    name, has_value, value = arg.partition("=")
    if name in (f"--{flag_name}", f"-{flag_name}"):
      config_file = value if has_value else next(iter(argv[i + 1:i + 2]), None)
  if config_file is None:
    return None
  config = load_config_file(config_file)
  for arg in argv:
    if not arg.startswith(f"--{flag_name}."):
      continue
    key = arg.split("=", 1)[0].split(".", 1)[1]
    node, found = config, [flag_name]
    for part in key.split("."):
      if not isinstance(node, config_dict.ConfigDict):
        return f"--{flag_name}.{key}: {'.'.join(found)} in {config_file} is a value, not a section"
      if part not in node:
        hint = difflib.get_close_matches(part, node.keys(), n=1)
        return (f"--{flag_name}.{key}: {config_file} has no key {part!r} in {'.'.join(found)}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (keys there: {', '.join(sorted(node.keys()))})")
      node = node[part]
      found.append(part)
  return None


def parse_flags(argv: list[str], flag_name: str = "config") -> list[str]:
  """absl `flags_parser` that reports a typo'd `--config.KEY` as one line naming the key.

  `--config.train.steps=N` without a `--config.train.total_tokens` replaces the file's
  total_tokens (exactly one of the two sets the run's length)."""
  try:
    remaining = flags.FLAGS(argv)
    config = flags.FLAGS[flag_name].value
    given = {arg.split("=", 1)[0] for arg in argv}
    if (f"--{flag_name}.train.steps" in given
        and f"--{flag_name}.train.total_tokens" not in given and config is not None):
      config.train.total_tokens = None
    return remaining
  except (KeyError, AttributeError) as error:  # what config_flags raises for an unknown key
    message = _unknown_override(argv, flag_name) or f"bad --{flag_name} override: {error}"
  except flags.Error as error:
    message = str(error)
  print(f"error: {message}\nRun with --helpshort for the flags.", file=sys.stderr)
  sys.exit(2)


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for a command of ours, so that a second run skips
  the compiles of the first: in $JAX_COMPILATION_CACHE_DIR where set (JAX reads it itself; empty
  turns the cache off), else in ~/.cache/llama_jax/jax. Safe to share between runs and programs:
  an entry's key covers the program, the compiler options, the devices and the jax version.
  Returns the directory, or None when off."""
  import os

  import jax

  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                             str(Path.home() / ".cache" / "llama_jax" / "jax"))
  if not directory:
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  # Small CPU programs compile in well under JAX's default threshold of one second.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return directory
