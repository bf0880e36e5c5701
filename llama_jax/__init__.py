"""llama-jax: the LLaMA-1 pre-training system (Touvron et al. 2023) in JAX and Flax NNX."""

from llama_jax.model import Llama, ModelConfig

__all__ = ["Llama", "ModelConfig", "from_pretrained"]


def __getattr__(name: str):
  # Imported on first use: an eager import would load llama_jax.convert before
  # `python -m llama_jax.convert` runs it as __main__ (runpy warns about that).
  if name == "from_pretrained":
    from llama_jax.convert import from_pretrained

    return from_pretrained
  raise AttributeError(f"module 'llama_jax' has no attribute {name!r}")
