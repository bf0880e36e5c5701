"""The recipe in miniature (`make demo`, llama_jax.recipe): the shipped raw corpus of
examples/mini_corpus through every Table 1 pipeline, a small tokenizer, configs/tiny.py's model
trained on the Table 1 mixture, and evaluation on the benchmark samples in tests/data/eval.

A demonstration that the parts fit, sized for 2 CPU cores: its scores are a tiny model's, not a
reproduction of the paper's.
"""

from pathlib import Path

from ml_collections import config_dict

from llama_jax.config import load_config_file


def get_config():
  # configs/tiny.py: 4 layers of dim 128, context 256, batch 8, float32.
  config = load_config_file(Path(__file__).with_name("tiny.py"))
  config.model.vocab_size = 2000  # a small vocabulary for a ~3 MB corpus (the paper: 32000)
  config.train.total_tokens = 250 * 8 * 256  # 250 steps
  config.optim.warmup_steps = 25  # a tenth of the steps (the paper: 2000 of ~350k)
  config.checkpoint.every_steps = 50

  config.recipe = config_dict.ConfigDict()
  config.recipe.corpus_dir = "examples/mini_corpus"
  # Raw files per source (globs under corpus_dir) and the source's preprocessing.run flags.
  # CCNet's KenLM perplexity and Wikipedia-reference steps need models trained on a corpus far
  # larger than this one (cc_net's LM on all of a language's Wikipedia), so they are skipped
  # here, and stats.json records it; the language identifier is trained from language_id_data.
  config.recipe.sources = config_dict.ConfigDict({
      "ccnet": {"input": "commoncrawl/*.warc.wet.gz", "flags": ("--skip=perplexity,reference",)},
      "c4": {"input": "c4/*.warc.wet.gz", "flags": ()},
      "github": {"input": "github/*.jsonl.gz", "flags": ()},
      "wikipedia": {"input": "wikipedia/*-pages-articles.xml.bz2", "flags": ()},
      "books": {"input": "books/*.txt*", "flags": ()},
      "arxiv": {"input": "arxiv/*.tar.gz", "flags": ()},
      # The paper keeps the 28 largest sites; of the three shipped here, the 2 largest.
      "stackexchange": {"input": "stackexchange/*/Posts.xml",
                        "flags": ("--stackexchange_sites=largest:2",)},
  })
  config.recipe.language_id_data = "language_id/train.txt"  # fastText `__label__xx text` lines
  config.recipe.language_id_model = ""  # a fastText LID model (lid.176.bin) to use instead

  config.recipe.eval = config_dict.ConfigDict()
  config.recipe.eval.tasks = "common_sense,nq_open"  # the paper's Table 3, and Table 4's NQ
  config.recipe.eval.data_dir = "tests/data/eval"
  config.recipe.eval.limit = 0  # 0: every item of the samples
  config.recipe.eval.max_new_tokens = 16  # NQ answers are a few words; the stop is a newline

  config.recipe.samples = config_dict.ConfigDict()
  config.recipe.samples.prompts = (
      "The Rust programming language",
      "Question: How do I add a dependency to my project?\nAnswer:",
      "def read_config(path):",
      "\\section{Introduction}",
  )
  config.recipe.samples.max_new_tokens = 48
  config.recipe.samples.temperature = 0.8
  config.recipe.samples.top_p = 0.95
  config.recipe.samples.num_samples = 1
  config.recipe.samples.seed = 0
  return config
