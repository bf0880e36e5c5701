"""Evaluation during training (the `eval` section of a config; the paper's Figure 2): likelihood
and generative tasks scored with the training parameters every `eval.every_steps` steps."""

from __future__ import annotations

from pathlib import Path

from llama_jax.eval.registry import EvalModel, EvalSettings, resolve_tasks
from llama_jax.eval.scoring import Scorer
from llama_jax.generate import Generator
from llama_jax.model import ModelConfig
from llama_jax.sharding import MeshRules
from llama_jax.tokenizer import Tokenizer


class PeriodicEvaluation:
  """The `eval` section of a training config: its tasks scored with the training parameters."""

  def __init__(self, eval_config, model_config: ModelConfig, tokenizer_file: str | None,
               mesh_rules: MeshRules, abstract_params):
    self.tasks = resolve_tasks([name.strip() for name in eval_config.tasks.split(",")])
    if not eval_config.data_dir:
      raise ValueError("eval.tasks is set but eval.data_dir is not: give the directory of the "
                       "benchmarks' released files")
    if not tokenizer_file:
      raise ValueError("eval.tasks is set but data.tokenizer is not: evaluation tokenizes text "
                       "with the training data's SentencePiece model")
    self.config = eval_config
    data_dir = Path(eval_config.data_dir)
    for task in self.tasks:  # a missing or malformed file stops the run now, not hours later
      task.check_files(data_dir)
    tokenizer = Tokenizer(tokenizer_file)
    if tokenizer.vocab_size > model_config.vocab_size:
      raise ValueError(f"data.tokenizer {tokenizer_file} has {tokenizer.vocab_size} pieces but "
                       f"model.vocab_size is {model_config.vocab_size}")
    model = (model_config, abstract_params, tokenizer, mesh_rules, eval_config.batch_size)
    self.scorer, self.generator = Scorer(*model), Generator(*model)
    self.eval_model = EvalModel(self.scorer, self.generator.generate)
    self.eval_settings = EvalSettings(num_fewshot=eval_config.num_fewshot,
                                      limit=eval_config.limit, progress=False)

  def due(self, step: int, last_step: int) -> bool:
    return step % self.config.every_steps == 0 or step == last_step

  def __call__(self, params) -> dict[str, float]:
    """{"eval/TASK/METRIC": value} for the parameters given."""
    self.scorer.params = self.generator.params = params
    data_dir = Path(self.config.data_dir)
    results = [task.evaluate(self.eval_model, data_dir, self.eval_settings) for task in self.tasks]
    return {f"eval/{r.task.name}/{name}": metric.mean for r in results
            for name, metric in r.metrics.items()}
