"""Config files against the paper's Table 2 and section 2.3, and the command-line contract."""

import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from llama_jax.config import tokens_per_step, total_steps

# Touvron et al. 2023, Table 2: dim, heads, layers, peak lr, training tokens.
TABLE_2 = {
    "7b": (4096, 32, 32, 3.0e-4, 1.0e12),
    "13b": (5120, 40, 40, 3.0e-4, 1.0e12),
    "33b": (6656, 52, 60, 1.5e-4, 1.4e12),
    "65b": (8192, 64, 80, 1.5e-4, 1.4e12),
}


def meta_ffn_dim(dim: int, multiple_of: int = 256) -> int:
  """Meta's released model code: int(2/3 * 4 * dim) rounded up to a multiple of 256."""
  hidden = int(2 * (4 * dim) / 3)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@pytest.mark.parametrize("name", sorted(TABLE_2))
def test_paper_sizes_match_table_2(load_config, name):
  config = load_config(name)
  dim, heads, layers, lr, tokens = TABLE_2[name]
  assert (config.model.dim, config.model.n_heads, config.model.n_layers) == (dim, heads, layers)
  assert config.model.dim // config.model.n_heads == 128
  assert config.optim.peak_lr == lr
  assert config.train.total_tokens == tokens
  assert (config.model.vocab_size, config.model.context_length) == (32000, 2048)
  # 2048 sequences of 2048 tokens: the paper's 4M-token batch.
  assert config.train.batch_size * config.model.context_length == 4 * 2**20
  assert (config.optim.b1, config.optim.b2, config.optim.weight_decay) == (0.9, 0.95, 0.1)
  assert (config.optim.grad_clip_norm, config.optim.warmup_steps) == (1.0, 2000)
  assert config.optim.final_lr_ratio == 0.1
  assert (config.model.norm_eps, config.model.rope_theta) == (1e-6, 10000.0)
  assert (config.model.dtype, config.model.param_dtype) == ("bfloat16", "float32")


@pytest.mark.parametrize("name, expected", [
    ("7b", 11008), ("13b", 13824), ("33b", 17920), ("65b", 22016), ("1b", 5632), ("tiny", 512)])
def test_ffn_dim_follows_meta_rounding(load_config, name, expected):
  config = load_config(name)
  assert config.model.ffn_dim == expected == meta_ffn_dim(config.model.dim)


def test_one_gpu_config(load_config):
  model = load_config("1b").model
  assert (model.dim, model.n_layers, model.n_heads, model.ffn_dim) == (2048, 24, 16, 5632)


def _recipe(*args):
  return subprocess.run([sys.executable, "-m", "llama_jax.recipe", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)


def test_typod_config_key_is_an_error_naming_it():
  result = _recipe("--config=configs/mini.py", "--config.model.dimm=3")
  assert result.returncode == 2
  assert "--config.model.dimm" in result.stderr
  assert "did you mean 'dim'?" in result.stderr
  assert "Traceback" not in result.stderr


def test_typod_config_section_is_an_error_naming_it():
  result = _recipe("--config=configs/mini.py", "--config.modle.dim=3")
  assert result.returncode == 2
  assert "no key 'modle' in config; did you mean 'model'?" in result.stderr


def test_bad_config_value_is_a_usage_error():
  result = _recipe("--config=configs/mini.py", "--config.model.remat=fulll")
  assert result.returncode == 1
  assert "model.remat='fulll'; choose one of" in result.stderr
  assert "Traceback" not in result.stderr


def test_the_run_length_is_exactly_one_of_steps_and_total_tokens(load_config):
  config = load_config("tiny")
  assert config.train.steps is None
  assert total_steps(config) == round(config.train.total_tokens / tokens_per_step(config))
  config.train.steps = 7
  with pytest.raises(ValueError, match=r"exactly one of train.steps \(7\) and train.total_tokens"):
    total_steps(config)
  config.train.total_tokens = None
  assert total_steps(config) == 7
  config.train.steps = None
  with pytest.raises(ValueError, match="exactly one"):
    total_steps(config)
  config.train.steps = 0
  with pytest.raises(ValueError, match="train.steps=0: must be at least 1"):
    total_steps(config)
