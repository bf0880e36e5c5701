"""A 1.36B-parameter LLaMA for one GPU (ours, not the paper's): the throughput benchmark's model.

Same recipe as 7b.py at dim 2048, 16 heads of 128, 24 layers; the peak learning rate is the
7B/13B value.
"""

from llama_jax.config import base_config


def get_config():
  config = base_config()
  config.model.dim = 2048
  config.model.n_heads = 16
  config.model.n_layers = 24
  config.model.ffn_dim = 5632  # 2/3 * 4 * 2048 rounded up to a multiple of 256
  config.optim.peak_lr = 3.0e-4
  config.train.total_tokens = 2.0e10  # 20 tokens per parameter (Hoffmann et al. 2022)
  return config
