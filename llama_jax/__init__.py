"""llama-jax: the LLaMA-1 pre-training system (Touvron et al. 2023) in JAX and Flax NNX."""

from llama_jax.formats.hf import from_pretrained
from llama_jax.model import Llama, ModelConfig

__all__ = ["Llama", "ModelConfig", "from_pretrained"]
