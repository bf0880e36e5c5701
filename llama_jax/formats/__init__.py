"""Checkpoint formats, one module each; llama_jax.convert converts between them.

layout.py  one table naming every tensor in the three formats, and how torch's layout maps onto
           ours (llama_jax.model): [out, in] matrices become [in, out] with the head axes split
           out. Meta's code and ours apply RoPE to interleaved pairs of each head; Hugging Face's
           port rotates the two halves and permutes the q and k rows to match, so those rows are
           un-permuted on the way in and permuted back on the way out. Meta's rows need neither.
hf.py      Hugging Face LLaMA directories: config.json (LlamaConfig) with model.safetensors, or
           shards with model.safetensors.index.json, and tokenizer.model; from_pretrained.
meta.py    Meta's release: params.json and consolidated.NN.pth, one file per model-parallel rank
           (fairscale), read with torch.load(weights_only=True, mmap=True): a file that pickles
           anything but tensors is refused, never executed.

Our orbax runs are read by llama_jax.inference (load_model) and written by llama_jax.convert.
"""
