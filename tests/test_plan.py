"""The memory planner: exact state bytes per device, XLA's activations, candidates, the estimate."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from llama_jax import gpu_compile
from llama_jax.model import ModelConfig, abstract_model, count_params
from llama_jax.plan import (
  LINKS_GB_S,
  candidate_meshes,
  communication_seconds,
  plan_mesh,
)
from llama_jax.sharding import parse_mesh

A100S = gpu_compile.gpu_devices("a100", 8)  # compiled for, without a GPU


@pytest.fixture
def tiny(load_config):
  config = load_config("tiny")
  config.model.n_heads = 8  # so that tensor=2 and 8 both split the heads
  return config


def test_state_bytes_are_the_shards_of_the_model(tiny):
  model_config = ModelConfig.from_dict(tiny.model)
  params = count_params(abstract_model(model_config))
  norm_scales = (2 * model_config.n_layers + 1) * model_config.dim
  row = plan_mesh(tiny, {"data": 1, "fsdp": 4, "tensor": 2}, A100S, batch_size=8)
  assert row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
  # Weight matrices split 8 ways (fsdp x tensor), norm scales only over fsdp; AdamW keeps two
  # float32 moments per parameter, and optax adds a step counter (4 bytes, replicated).
  assert row["params"] == row["gradients"] == (params - norm_scales) * 4 // 8 + norm_scales
  assert row["optimizer_state"] - 2 * row["params"] in (4, 8)
  assert row["activations_and_temporaries"] > 0
  assert row["total"] > row["params"] + row["optimizer_state"]
  replicated = plan_mesh(tiny, {"data": 8, "fsdp": 1, "tensor": 1}, A100S, batch_size=8)
  assert replicated["params"] == params * 4


def test_a_model_that_cannot_split_is_reported(tiny):
  tiny.model.n_heads = 4
  with pytest.raises(ValueError, match="n_heads=4 is not divisible by mesh.tensor=8"):
    plan_mesh(tiny, {"data": 1, "fsdp": 1, "tensor": 8}, A100S, batch_size=8)


def test_candidates_keep_tensor_inside_a_node():
  config = ModelConfig(vocab_size=32000, dim=8192, n_layers=80, n_heads=64, ffn_dim=22016)
  meshes = candidate_meshes(config, 2048, gpus_per_node=8)
  assert {m["tensor"] for m in meshes} == {1, 2, 4, 8}
  assert all(m["data"] * m["fsdp"] * m["tensor"] == 2048 for m in meshes)
  assert {"data": 1, "fsdp": 256, "tensor": 8} in meshes
  assert {"data": 256, "fsdp": 1, "tensor": 8} in meshes  # a node is all tensor: plain data
  assert {"data": 256, "fsdp": 4, "tensor": 2} in meshes


def test_parse_mesh():
  assert parse_mesh("fsdp=-1,tensor=8") == {"data": 1, "fsdp": -1, "tensor": 8}
  with pytest.raises(ValueError, match="data=D,fsdp=F,tensor=T"):
    parse_mesh("fsdp=all")


def test_communication_estimate_follows_its_formula():
  config = ModelConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, ffn_dim=11008)
  links = LINKS_GB_S["a100"]
  params = 6.74e9
  assert communication_seconds(config, params, {"data": 1, "fsdp": 1, "tensor": 1}, 4e6, 8,
                               links) == 0
  # Pure FSDP across nodes: three passes over the bfloat16 weights on the network link.
  fsdp = communication_seconds(config, params, {"data": 1, "fsdp": 256, "tensor": 1}, 4e6, 8,
                               links)
  np.testing.assert_allclose(fsdp, 3 * 255 / 256 * 2 * params / 25e9)
  # The same FSDP inside one node uses NVLink, 12x faster on an A100.
  in_node = communication_seconds(config, params, {"data": 32, "fsdp": 8, "tensor": 1}, 4e6, 8,
                                  links)
  assert in_node < fsdp / 2


def test_a_bad_mesh_flag_is_one_message_without_a_traceback():
  result = subprocess.run([sys.executable, "-m", "llama_jax.plan", "--config=configs/tiny.py",
                           "--devices=8", "--mesh=fsdp=all"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1
  assert "write data=D,fsdp=F,tensor=T" in result.stderr
  assert "Traceback" not in result.stderr
