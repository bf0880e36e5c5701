"""Corpus pipelines on Apache Beam: one module per source of the paper's Table 1 (ccnet/, c4.py,
github.py, wikipedia.py, books.py, arxiv.py, stackexchange.py), run by run.py; their shared
wiring (pipeline.py, document.py, wet.py, decompress.py); tokenize_shards.py (token shards for
llama_jax.data) and tfds_output.py (a source as a TFDS dataset); testing/ (synthetic inputs for
the tests and benchmarks).
"""
