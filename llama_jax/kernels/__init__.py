"""Hand-written kernels; llama_jax.attention chooses between them and plain XLA."""
