"""LLaMA-7B: 6.7B parameters, trained on 1.0T tokens (Touvron et al. 2023, Table 2)."""

from llama_jax.config import base_config


def get_config():
  config = base_config()
  config.model.dim = 4096
  config.model.n_heads = 32
  config.model.n_layers = 32
  config.model.ffn_dim = 11008
  config.optim.peak_lr = 3.0e-4
  config.train.total_tokens = 1.0e12
  return config
