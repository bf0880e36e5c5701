"""llama_jax.eval: the scorer on meshes, the command line, results.json, evaluation in training."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT

from llama_jax.eval.generative import evaluate_generative
from llama_jax.eval.likelihood import TASKS, evaluate_likelihood
from llama_jax.eval.scoring import load_scorer, pack_rows
from llama_jax.generate import load_generator
from llama_jax.inference import bucket_lengths
from llama_jax.metrics import read_metrics
from llama_jax.testing.hf_reference import META_TOKENIZER
from llama_jax.testing.training_runs import SMALL_TINY
from llama_jax.train import Trainer
from preprocessing.testing.token_shards import write_source

EVAL_DATA = REPO_ROOT / "tests" / "data" / "eval"


def _scorer(directory, mesh="data=1,fsdp=-1,tensor=1", devices=None, batch_size=8):
  from llama_jax.sharding import parse_mesh

  return load_scorer(directory, dtype="float32", mesh_config=parse_mesh(mesh),
                     batch_size=batch_size, devices=devices)


@pytest.fixture(scope="module")
def piqa_requests():
  return [option for example in TASKS["piqa"].examples(EVAL_DATA) for option in example.options]


def test_scores_on_meshes_equal_one_device(hf_llama_dir, piqa_requests):
  one = _scorer(hf_llama_dir, devices=jax.devices()[:1]).loglikelihood(piqa_requests)
  for mesh in ("data=2,fsdp=2,tensor=2", "fsdp=2,tensor=4"):
    scores = _scorer(hf_llama_dir, mesh).loglikelihood(piqa_requests)
    np.testing.assert_allclose([ll for ll, _ in scores], [ll for ll, _ in one], rtol=1e-5,
                               err_msg=mesh)
    assert [greedy for _, greedy in scores] == [greedy for _, greedy in one]


def test_rows_are_padded_into_a_few_shapes(hf_llama_dir, piqa_requests):
  scorer = _scorer(hf_llama_dir)
  # The compilation cache is jax's, per function: other scorers of this model may have filled it.
  hidden, _, score = scorer._jitted
  cached = hidden._cache_size(), score._cache_size()
  scorer.loglikelihood(piqa_requests)
  lengths = {len(r.context) + len(r.continuation) for r in piqa_requests}
  assert len(lengths) >= 15  # the items have many different lengths ...
  padded = {length for length, _ in scorer.compiled_shapes}
  scored = {positions for _, positions in scorer.compiled_shapes}
  assert 1 <= len(padded) <= 3 and padded <= set(bucket_lengths(256))  # ... padded to a few,
  assert all(positions % (4 * scorer.batch_size) == 0 for positions in scored)
  # the layers compiled once per padded length, the output layer once per scored size.
  assert hidden._cache_size() - cached[0] <= len(padded)
  assert score._cache_size() - cached[1] <= len(scored)
  assert bucket_lengths(256) == [32, 48, 64, 96, 128, 192, 256]
  assert bucket_lengths(100) == [32, 48, 64, 96, 100]


def test_continuations_of_one_context_share_a_row_and_score_as_alone(hf_llama_dir):
  scorer = _scorer(hf_llama_dir)
  context = scorer.tokenizer.encode("Question: which tool cuts wood?\nAnswer:", bos=True)
  options = [" a saw", " a spoon that is made of soft plastic", " glue"]
  pairs = [(context, scorer.tokenizer.encode(option)) for option in options]
  lengths = [len(continuation) for _, continuation in pairs]
  (row,) = pack_rows(pairs, 256)  # one row: the context once, then each option
  assert len(row.tokens) == len(context) + sum(lengths) - 1
  assert row.segments[:len(context)] == [0] * len(context)
  assert row.positions[len(context) + lengths[0]] == len(context)  # option 2 starts afresh
  # Shared, the options score as each does alone (in a row of its own).
  together = scorer.loglikelihood_tokens(pairs)
  alone = [scorer.loglikelihood_tokens([pair])[0] for pair in pairs]
  np.testing.assert_allclose([ll for ll, _ in together], [ll for ll, _ in alone], rtol=0,
                             atol=1e-5)
  assert [greedy for _, greedy in together] == [greedy for _, greedy in alone]
  # Rows hold at most max_length tokens: here two options, then the third alone.
  assert [len(r.scored) for r in pack_rows(pairs, len(context) + lengths[0] + lengths[1] - 1)] \
      == [2, 1]
  with pytest.raises(ValueError, match="empty context"):
    pack_rows([([], [5])], 256)


def test_identical_requests_are_scored_once(hf_llama_dir, piqa_requests, monkeypatch):
  scorer = _scorer(hf_llama_dir)
  requests = piqa_requests[:4] + piqa_requests[:2]
  scored = []
  score_tokens = scorer.loglikelihood_tokens
  monkeypatch.setattr(scorer, "loglikelihood_tokens", lambda pairs, on_done: scored.append(
      len(pairs)) or score_tokens(pairs, on_done))
  done = []
  results = scorer.loglikelihood(requests, on_done=done.append)
  assert scored == [4] and sorted(done) == list(range(6))
  assert results[4:] == results[:2] and results[:4] == scorer.loglikelihood(requests[:4])


def _run_eval(*flags):
  return subprocess.run([sys.executable, "-m", "llama_jax.eval", *map(str, flags)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def test_cli_writes_results_json_and_prints_the_table(hf_llama_dir, tmp_path):
  output = tmp_path / "out" / "results.json"
  # A likelihood task beside two generative ones (one loaded model).
  run = _run_eval(f"--ckpt={hf_llama_dir}", "--tasks=piqa,nq_open,humaneval",
                  f"--data_dir={EVAL_DATA}", "--limit=6", "--max_new_tokens=12", "--dtype=float32",
                  f"--output={output}", "--log_samples")
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(output.read_text())
  piqa, nq, humaneval = (results["results"][name] for name in ("piqa", "nq_open", "humaneval"))
  assert piqa["n"] == 6 and piqa["num_fewshot"] == 0
  assert set(piqa) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
  settings = results["settings"]
  assert settings["limit"] == 6 and settings["model_config"]["dtype"] == "float32"
  assert results["paper_llama_7b"]["piqa"] == {"metric": "acc_norm", "value": 79.8}
  # A random model answers nothing right; what is checked is that every item was generated for,
  # scored, and (code) run in the sandbox.
  assert nq["n"] == 6 and nq["exact_match"] == 0 and nq["generation"]["max_new_tokens"] == 12
  assert humaneval["n"] == 5 and humaneval["pass@1"] == 0  # the sample file has 5 problems
  assert humaneval["generation"]["temperature"] == 0.1
  samples = [json.loads(line) for line in open(output.with_suffix(".samples.jsonl"))]
  by_task = {task: [s for s in samples if s["task"] == task] for task in results["results"]}
  assert [len(v) for v in by_task.values()] == [6, 6, 5]
  assert np.mean([s["acc"] for s in by_task["piqa"]]) == pytest.approx(piqa["acc"])
  assert all(len(s["completions"]) == 1 and s["statuses"][0] in ("failed", "passed")
             for s in by_task["humaneval"])
  row = next(line for line in run.stdout.splitlines() if line.startswith("piqa") and "*" in line)
  assert row.split()[1:3] == ["acc_norm", "*"] and row.endswith("79.8")
  assert f"{100 * piqa['acc_norm']:.2f}" in row


def test_cli_names_the_missing_file_and_where_to_get_it(hf_llama_dir, tmp_path):
  run = _run_eval(f"--ckpt={hf_llama_dir}", "--tasks=hellaswag", f"--data_dir={tmp_path}")
  assert run.returncode == 1
  assert f"{tmp_path}/hellaswag/hellaswag_val.jsonl not found" in run.stderr
  assert "github.com/rowanz/hellaswag" in run.stderr
  run = _run_eval(f"--ckpt={hf_llama_dir}", "--tasks=piqa,hellaswagg", f"--data_dir={tmp_path}")
  assert run.returncode == 1 and "unknown tasks ['hellaswagg']" in run.stderr


def test_evaluation_during_training_equals_evaluating_the_checkpoint(load_config, tmp_path):
  """Every 3 steps the configured tasks are scored and logged; the logged values equal a
  standalone evaluation of the checkpoint saved at that step."""
  rng = np.random.default_rng(0)
  documents = [rng.integers(3, 500, int(rng.integers(20, 80))) for _ in range(200)]
  write_source(tmp_path / "tokens" / "wikipedia", documents, num_shards=1, vocab_size=32000)
  config = load_config("tiny")
  # A context of 128 tokens: PIQA's answers are up to 60.
  overrides = {**SMALL_TINY, "model.vocab_size": 32000, "model.context_length": 128,
               "train.total_tokens": 6 * 8 * 128.0,
               "optim.peak_lr": 1e-2, "checkpoint.every_steps": 3, "data.dir": tmp_path / "tokens",
               "data.tokenizer": META_TOKENIZER, "eval.tasks": "piqa,arc_easy,nq_open",
               "eval.every_steps": 3, "eval.data_dir": EVAL_DATA, "eval.limit": 5}
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = str(value) if hasattr(value, "is_dir") else value
  for name in config.data.shares:
    config.data.shares[name] = float(name == "wikipedia")
  workdir = tmp_path / "run"
  trainer = Trainer(config, workdir, devices=jax.devices()[:1])
  try:
    trainer.run()
  finally:
    trainer.close()
  logged = {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")}
            for r in read_metrics(workdir / "metrics.jsonl")}
  assert [step for step, values in logged.items() if values] == [3, 6]
  assert set(logged[6]) == {"eval/piqa/acc", "eval/piqa/acc_norm", "eval/arc_easy/acc",
                            "eval/arc_easy/acc_norm", "eval/nq_open/exact_match",
                            "eval/nq_open/no_answer"}
  for step in (3, 6):
    scorer = load_scorer(workdir / "checkpoints" / str(step), batch_size=16)
    assert scorer.description.endswith(f"step {step}")
    results = [evaluate_likelihood(scorer, TASKS[task], EVAL_DATA, limit=5, progress=False)
               for task in ("piqa", "arc_easy")]
    generator = load_generator(workdir / "checkpoints" / str(step), batch_size=16)
    results.append(evaluate_generative(generator.generate, "nq_open", EVAL_DATA, limit=5,
                                       progress=False))
    for result in results:
      for name, metric in result.metrics.items():
        assert logged[step][f"eval/{result.task.name}/{name}"] == metric.mean


def test_a_run_without_eval_data_is_refused_before_training(load_config, tmp_path):
  config = load_config("tiny")
  config.data.dir, config.data.tokenizer = str(tmp_path), str(META_TOKENIZER)
  config.eval.tasks, config.eval.data_dir = "piqa", str(tmp_path / "none")
  with pytest.raises(ValueError, match="piqa/valid.jsonl not found"):
    Trainer(config, tmp_path / "run", devices=jax.devices()[:1])


# --- parity with lm-evaluation-harness's own `hf` model ----------------------------------------

@pytest.fixture(scope="module")
def float32_scorer(hf_llama_dir):
  return _scorer(hf_llama_dir)


@pytest.mark.parametrize("name,num_fewshot", [("hellaswag", 0), ("piqa", 0), ("arc_easy", 0),
                                              ("arc_challenge", 0), ("winogrande", 0),
                                              ("boolq", 0), ("hellaswag", 2)])
def test_loglikelihoods_and_accuracies_equal_the_harness_hf_model(
    name, num_fewshot, hf_lm, float32_scorer, tmp_path):
  """The harness's own task and `hf` model against our task and scorer on the same released-format
  items: per-option log-likelihoods to 1e-4 (float32) and the same acc / acc_norm per item."""
  from lm_eval_reference import harness_requests, harness_task

  task = harness_task(tmp_path, name)
  harness_requests([task], num_fewshot)  # builds task.instances as simple_evaluate would
  responses = hf_lm.loglikelihood(task.instances)
  by_doc = {}
  for instance, response in zip(task.instances, responses, strict=True):
    by_doc.setdefault(instance.doc_id, (instance.doc, {}))[1][instance.idx] = response
  theirs = []
  for doc_id in sorted(by_doc):
    doc, options = by_doc[doc_id]
    responses = [options[i] for i in sorted(options)]
    theirs.append(([ll for ll, _ in responses], task.process_results(doc, responses)))

  ours = evaluate_likelihood(float32_scorer, TASKS[name], EVAL_DATA, num_fewshot=num_fewshot,
                             progress=False)
  assert ours.n == len(theirs) >= 3
  for sample, (lls, metrics) in zip(ours.samples, theirs, strict=True):
    np.testing.assert_allclose(sample["loglikelihoods"], lls, rtol=0, atol=1e-4,
                               err_msg=sample["source"])
    for metric in set(metrics) & {"acc", "acc_norm"}:
      assert sample[metric] == metrics[metric], (sample["source"], metric)
  for metric in set(theirs[0][1]) & {"acc", "acc_norm"}:
    assert ours.metrics[metric].mean == pytest.approx(np.mean([m[metric] for _, m in theirs]))


def test_a_non_llama_hugging_face_directory_is_refused_with_the_reason(hf_llama_dir, tmp_path):
  config = json.loads((hf_llama_dir / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  with pytest.raises(ValueError, match="model_type is 'gpt2', expected 'llama'"):
    load_scorer(tmp_path)
