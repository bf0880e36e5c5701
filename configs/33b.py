"""LLaMA-33B: 32.5B parameters, trained on 1.4T tokens (Touvron et al. 2023, Table 2)."""

from llama_jax.config import base_config


def get_config():
  config = base_config()
  config.model.dim = 6656
  config.model.n_heads = 52
  config.model.n_layers = 60
  config.model.ffn_dim = 17920
  config.optim.peak_lr = 1.5e-4
  config.train.total_tokens = 1.4e12
  return config
