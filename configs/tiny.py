"""A LLaMA small enough for CPU tests and the demo (ours): 4 layers of dim 128, real vocabulary."""

from llama_jax.config import base_config


def get_config():
  config = base_config()
  config.model.dim = 128
  config.model.n_heads = 4
  config.model.n_layers = 4
  config.model.ffn_dim = 512  # 2/3 * 4 * 128 rounded up to a multiple of 256
  config.model.context_length = 256
  config.model.dtype = "float32"  # CPUs have no fast bfloat16 matmul
  config.optim.peak_lr = 1.0e-3
  config.optim.warmup_steps = 20
  config.train.batch_size = 8
  config.train.total_tokens = 1.0e6
  config.train.log_every = 1
  config.checkpoint.every_steps = 50
  return config
