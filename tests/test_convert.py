"""from_pretrained against Hugging Face transformers' LlamaForCausalLM on the CPU."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llama_jax import from_pretrained
from llama_jax.convert import model_config_from_hf

# A small random LLaMA; eps and theta differ from the defaults so that reading them is tested.
HF_CONFIG = dict(vocab_size=101, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                 rms_norm_eps=1e-5, rope_theta=20000.0, tie_word_embeddings=False,
                 initializer_range=0.1)  # larger than the default 0.02: logits of order 1


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(**HF_CONFIG)).eval()
  # Norm scales start at 1; randomise them so a missed or swapped norm shows in the logits.
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.uniform_(0.5, 1.5)
  return model


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def _tokens(length=48):
  return np.random.default_rng(0).integers(0, HF_CONFIG["vocab_size"], (2, length), np.int32)


def test_logits_match_transformers_float32(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  model, config = from_pretrained(tmp_path, dtype=jnp.float32)
  assert (config.dim, config.n_layers, config.n_heads, config.ffn_dim) == (64, 3, 4, 176)
  assert (config.norm_eps, config.rope_theta, config.dtype) == (1e-5, 20000.0, "float32")
  tokens = _tokens()
  logits = model(jnp.asarray(tokens))
  assert logits.dtype == jnp.float32
  assert np.max(np.abs(np.asarray(logits) - _hf_logits(hf_model, tokens))) <= 1e-4


def test_bfloat16_sharded_checkpoint_loads(hf_model, tmp_path):
  bf16 = LlamaForCausalLM(LlamaConfig(**HF_CONFIG))
  bf16.load_state_dict(hf_model.state_dict())
  bf16.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="100KB")
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  model, config = from_pretrained(tmp_path, dtype="float32")
  # The reference is the same bfloat16 weights in a fresh float32 model (casting the bfloat16
  # model back would keep its RoPE frequencies rounded to bfloat16).
  reference_model = LlamaForCausalLM(LlamaConfig(**HF_CONFIG)).eval()
  reference_model.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
  tokens = _tokens()
  reference = _hf_logits(reference_model, tokens)
  assert np.max(np.abs(np.asarray(model(jnp.asarray(tokens))) - reference)) <= 1e-4


def test_default_compute_dtype_is_bfloat16(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  model, config = from_pretrained(tmp_path)
  assert config.dtype == "bfloat16"
  tokens = _tokens()
  logits = np.asarray(model(jnp.asarray(tokens)))
  assert logits.dtype == np.float32
  assert np.max(np.abs(logits - _hf_logits(hf_model, tokens))) < 0.1


def _config_dir(tmp_path, hf_model, **changes):
  hf_model.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(changes)
  (tmp_path / "config.json").write_text(json.dumps(config))
  return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"num_key_value_heads": 2}, "grouped-query attention"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope scaling"),
    ({"tie_word_embeddings": True}, "tied input and output embeddings"),
    ({"attention_bias": True}, r"biases \(attention_bias=true\)"),
    ({"mlp_bias": True}, r"biases \(mlp_bias=true\)"),
    ({"model_type": "mistral"}, "model_type is 'mistral'"),
])
def test_unsupported_configs_are_refused(hf_model, tmp_path, changes, message):
  directory = _config_dir(tmp_path, hf_model, **changes)
  with pytest.raises(ValueError, match=f"config.json: unsupported.*{message}"):
    from_pretrained(directory)


def test_missing_files_and_tensors_are_reported(hf_model, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    from_pretrained(tmp_path / "nowhere")
  hf_model.save_pretrained(tmp_path)
  (tmp_path / "model.safetensors").rename(tmp_path / "weights.bin")
  with pytest.raises(FileNotFoundError, match=r"no \*.safetensors files"):
    from_pretrained(tmp_path)


def test_wrong_tensors_are_reported(hf_model, tmp_path):
  from safetensors.torch import save_file

  state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
  hf_model.config.save_pretrained(tmp_path)
  save_file({k: v for k, v in state.items() if k != "model.norm.weight"},
            tmp_path / "model.safetensors")
  with pytest.raises(KeyError, match="tensor 'model.norm.weight' is missing"):
    from_pretrained(tmp_path)
  save_file({**state, "model.extra.weight": torch.zeros(3)}, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match=r"1 tensors this model has no place for.*model.extra"):
    from_pretrained(tmp_path)
  save_file({**state, "model.norm.weight": torch.zeros(5)}, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match=r"\['norm'\]\['scale'\] has shape \(5,\)"):
    from_pretrained(tmp_path)


def test_config_json_from_transformers_4_is_read():
  # transformers 4.x writes rope_theta at the top level; 5.x nests it in rope_parameters.
  config = model_config_from_hf({
      "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
      "num_hidden_layers": 32, "num_attention_heads": 32, "rope_theta": 500000.0,
      "rms_norm_eps": 1e-5, "rope_scaling": None, "max_position_embeddings": 4096})
  assert (config.dim, config.ffn_dim, config.n_layers, config.n_heads) == (4096, 11008, 32, 32)
  assert (config.rope_theta, config.norm_eps, config.context_length) == (500000.0, 1e-5, 4096)
