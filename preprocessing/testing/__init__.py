"""Synthetic inputs for the preprocessing tests and benchmarks (not used by the pipelines):
raw files of each source in its released format, and token shards as tokenize_shards writes
them."""
