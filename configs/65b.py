"""LLaMA-65B: 65.2B parameters, trained on 1.4T tokens (Touvron et al. 2023, Table 2)."""

from llama_jax.config import base_config


def get_config():
  config = base_config()
  config.model.dim = 8192
  config.model.n_heads = 64
  config.model.n_layers = 80
  config.model.ffn_dim = 22016
  config.optim.peak_lr = 1.5e-4
  config.train.total_tokens = 1.4e12
  return config
