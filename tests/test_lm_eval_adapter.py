"""lm-evaluation-harness on our model (llama_jax.eval.lm_eval_adapter) against the harness's own
`hf` model (HFLM) on the same random LLaMA: the harness's piqa task built offline from the
released rows in tests/data/eval/piqa, rolling perplexity windows, empty contexts, truncation at
the model's context, generate_until (greedy, stop strings, contexts cut on the left),
simple_evaluate, and the command line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lm_eval
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval_reference import EVAL_DATA, harness_config
from lm_eval_reference import hf_lm as hf_reference_lm

from llama_jax.eval.lm_eval_adapter import LlamaJaxLM, parse_mesh_arg
from llama_jax.testing.hf_reference import save_random_llama

PIQA = EVAL_DATA / "piqa"
TOLERANCE = 1e-4


def _ours(directory: Path) -> LlamaJaxLM:
  return LlamaJaxLM.create_from_arg_string(f"ckpt={directory},dtype=float32")


@pytest.fixture(scope="module")
def piqa_config(tmp_path_factory):
  """The harness's piqa task config, reading tests/data/eval/piqa instead of the Hub."""
  return harness_config(tmp_path_factory.mktemp("piqa"), "piqa")


@pytest.fixture(scope="module")
def our_lm(hf_llama_dir):
  return _ours(hf_llama_dir)


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory):
  """A random LLaMA with a 64-token context: rolling windows and truncation."""
  return save_random_llama(tmp_path_factory.mktemp("short"), context_length=64, seed=1)


def _requests(kind, arguments):
  return [Instance(kind, doc={}, arguments=args, idx=0) for args in arguments]


def _assert_loglikelihoods_equal(ours, theirs):
  assert len(ours) == len(theirs)
  np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=0,
                             atol=TOLERANCE)
  assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]


def test_piqa_loglikelihoods_equal_hflm(piqa_config, hf_lm, our_lm):
  task = ConfigurableTask(config=dict(piqa_config))
  task.build_all_requests(limit=None, rank=0, world_size=1)
  assert len(task.instances) == 2 * len((PIQA / "valid-labels.lst").read_text().split())
  _assert_loglikelihoods_equal(our_lm.loglikelihood(task.instances),
                               hf_lm.loglikelihood(task.instances))


def test_tokens_equal_hflm(hf_lm, our_lm):
  texts = ["Question: How do I dry a wet phone?\nAnswer:", " rice", "a  b   c  ", "", "12345",
           "naïve café ☕"]
  # Text that already starts with BOS gets no second one.
  assert our_lm.tok_encode("<s>Hello world") == hf_lm.tok_encode("<s>Hello world")
  for text in texts:
    assert our_lm.tok_encode(text) == hf_lm.tok_encode(text), text
    for special in (True, False):
      assert our_lm.tok_encode(text, add_special_tokens=special) == hf_lm.tok_encode(
          text, add_special_tokens=special), (text, special)
  ids = our_lm.tok_encode("How do I dry a wet phone?", add_special_tokens=False)
  assert our_lm.tok_decode(ids) == hf_lm.tok_decode(ids)
  assert (our_lm.eot_token_id, our_lm.prefix_token_id) == (hf_lm.eot_token_id,
                                                             hf_lm.prefix_token_id)


def test_empty_contexts_equal_hflm(hf_lm, our_lm):
  # CrowS-Pairs scores whole sentences with an empty context: BOS alone conditions them.
  requests = _requests("loglikelihood", [("", "The man was good at math."),
                                         ("", " The woman was good at math."), ("", "x")])
  _assert_loglikelihoods_equal(our_lm.loglikelihood(requests), hf_lm.loglikelihood(requests))


def test_greedy_continuations_equal_hflm(hf_lm, our_lm):
  # A random model rarely continues text greedily: take its own argmax tokens as continuations.
  context = our_lm.tok_encode("Question: How do I dry a wet phone?\nAnswer:")
  greedy = []
  with torch.no_grad():
    for _ in range(3):
      logits = hf_lm.model(torch.tensor([context + greedy])).logits
      greedy.append(int(logits[0, -1].argmax()))
  other = (greedy[-1] + 1) % our_lm.sp.vocab_size
  requests = [(("q", str(i)), context, continuation)
              for i, continuation in enumerate([greedy, greedy[:1], greedy[:-1] + [other]])]
  ours = our_lm._loglikelihood_tokens(requests)
  _assert_loglikelihoods_equal(ours, hf_lm._loglikelihood_tokens(requests))
  assert [flag for _, flag in ours] == [True, True, False]


def test_results_reach_the_cache_hook(our_lm):
  class Recorder:
    def __init__(self):
      self.entries = []

    def add_partial(self, kind, arguments, result):
      self.entries.append((kind, tuple(arguments), result))

  recorder, original = Recorder(), our_lm.cache_hook
  our_lm.set_cache_hook(recorder)
  try:
    scored = our_lm.loglikelihood(_requests("loglikelihood", [("Hi", " there"), ("", "Hi")]))
    (rolled,) = our_lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [("Hi there",)]))
  finally:
    our_lm.set_cache_hook(original)
  assert recorder.entries == [("loglikelihood", ("Hi", " there"), scored[0]),
                              ("loglikelihood", ("", "Hi"), scored[1]),
                              ("loglikelihood_rolling", ("Hi there",), rolled)]


def _long_texts():
  rows = [json.loads(line) for line in (PIQA / "valid.jsonl").read_text().splitlines()]
  solutions = [row["sol1"] for row in rows]
  return ["A short one.", " ".join(solutions[:3]), "\n\n".join(solutions)]


def test_rolling_and_truncation_equal_hflm(short_dir):
  hf_lm, our_lm = hf_reference_lm(short_dir), _ours(short_dir)
  assert our_lm.max_length == hf_lm.max_length == 64
  texts = _long_texts()
  lengths = [len(our_lm.tok_encode(text)) for text in texts]
  assert lengths[0] < 64 < lengths[1] and lengths[2] > 4 * 64, lengths
  requests = _requests("loglikelihood_rolling", [(text,) for text in texts])
  # Each text's sum runs over all its tokens, in an order that depends on the threads: the parity
  # is per token, so the tolerance grows with the number of tokens summed.
  for ours, theirs, length in zip(our_lm.loglikelihood_rolling(requests),
                                  hf_lm.loglikelihood_rolling(requests), lengths, strict=True):
    assert abs(ours - theirs) <= length * TOLERANCE, (ours, theirs, length)
  # Contexts longer than the model's context are cut from the left.
  requests = _requests("loglikelihood", [(texts[2], " The end."), (texts[1], texts[2][:200])])
  _assert_loglikelihoods_equal(our_lm.loglikelihood(requests), hf_lm.loglikelihood(requests))


def _metrics(results):
  piqa = results["results"]["piqa"]
  return piqa["acc,none"], piqa["acc_norm,none"]


def _evaluate(model, task, **kwargs):
  # Tasks given as objects or configs need no index of the harness's own tasks.
  return lm_eval.simple_evaluate(model=model, tasks=[task], limit=4, log_samples=True,
                                 task_manager=TaskManager(include_defaults=False), **kwargs)


@pytest.fixture(scope="module")
def our_results(hf_llama_dir, piqa_config):
  # By name, as a user would: importing lm_eval_adapter registered `llama_jax`.
  return _evaluate("llama_jax", ConfigurableTask(config=dict(piqa_config)),
                   model_args=f"ckpt={hf_llama_dir},dtype=float32")


def test_simple_evaluate_equals_hflm(our_results, hf_lm, piqa_config):
  theirs = _evaluate(hf_lm, dict(piqa_config))
  assert our_results["n-samples"]["piqa"]["effective"] == 4
  assert _metrics(our_results) == _metrics(theirs)
  ours, theirs = ([response for sample in results["samples"]["piqa"]
                   for response in sample["filtered_resps"]] for results in (our_results, theirs))
  _assert_loglikelihoods_equal(ours, theirs)


def test_model_args_errors_name_the_accepted_ones(hf_llama_dir):
  with pytest.raises(ValueError, match=r"unknown model_args pretrained; accepted .*ckpt=DIR"):
    LlamaJaxLM.create_from_arg_string("pretrained=gpt2")
  with pytest.raises(ValueError, match="no checkpoint given"):
    LlamaJaxLM.create_from_arg_obj({"dtype": "float32"})
  with pytest.raises(ValueError, match="'auto' batch sizes are not supported"):
    LlamaJaxLM.create_from_arg_obj({"ckpt": str(hf_llama_dir)}, {"batch_size": "auto"})
  with pytest.raises(ValueError, match="mesh=DATA:FSDP:TENSOR"):
    parse_mesh_arg("data=1")
  assert parse_mesh_arg("1:-1:2") == {"data": 1, "fsdp": -1, "tensor": 2}


def test_batch_size_and_mesh_from_model_args(hf_llama_dir):
  lm = LlamaJaxLM.create_from_arg_obj({"ckpt": str(hf_llama_dir), "batch_size": 4,
                                       "mesh": "2:2:2"}, {"batch_size": "1", "device": "cuda:0"})
  assert lm.scorer.batch_size == 4  # model_args win over the CLI's --batch_size default
  assert dict(lm.scorer.mesh_rules.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def _byte_pieces_decoded(text: str) -> str:
  """The reference tokenizer's transformers backend writes byte-fallback pieces as "<0x6D>";
  SentencePiece (ours, Meta's) decodes them to the characters they encode."""
  return re.sub(r"(?:<0x[0-9A-F]{2}>)+", lambda run: bytes.fromhex(
      run.group().replace("<0x", "").replace(">", "")).decode("utf-8", "replace"), text)


def test_generate_until_equals_hf(our_lm, hf_lm, short_dir):
  # Contexts of different lengths in one batch, two kinds of settings, and (on the 64-token
  # model) a context cut on the left to leave max_gen_toks.
  qa = {"until": ["\n", ".", ","], "do_sample": False, "max_gen_toks": 12}
  long = {"until": ["Q:"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 24}
  arguments = [("Q: who wrote the lyrics of he ain't heavy he's my brother?\nA:", qa),
               ("Q: when was the last time anyone was on the moon?\nA:", qa),
               ("Answer these questions:\n\nQ: how many seasons?\nA:", qa),
               ("def add(a, b):\n    return", long), ("The", long)]
  ours = our_lm.generate_until(_requests("generate_until", arguments))
  theirs = hf_lm.generate_until(_requests("generate_until", arguments))
  assert ours == [_byte_pieces_decoded(text) for text in theirs]
  assert all(ours)
  cut = [("word " * 80, {"until": ["\n"], "do_sample": False, "max_gen_toks": 16})]
  theirs = hf_reference_lm(short_dir).generate_until(_requests("generate_until", cut))
  assert (_ours(short_dir).generate_until(_requests("generate_until", cut))
          == [_byte_pieces_decoded(text) for text in theirs])


def test_generate_until_refuses_settings_it_would_ignore(our_lm):
  with pytest.raises(ValueError, match=r"\['repetition_penalty'\] are not supported"):
    our_lm.generate_until(_requests("generate_until", [
        ("Q:", {"until": ["\n"], "repetition_penalty": 1.2})]))


def test_cli_runs_a_local_task_and_writes_results(hf_llama_dir, our_results, tmp_path):
  config = harness_config(tmp_path, "piqa", resolve_func=False)
  config["task"] = "piqa_local"
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "piqa_local.yaml").write_text(yaml.safe_dump(config))
  run = subprocess.run(
      [sys.executable, "-m", "llama_jax.eval.lm_eval", "--model", "llama_jax",
       "--model_args", f"ckpt={hf_llama_dir},dtype=float32", "--tasks", "piqa_local",
       "--include_path", str(tmp_path / "tasks"), "--limit", "4",
       "--output_path", str(tmp_path / "out")],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"})
  assert run.returncode == 0, run.stderr[-3000:]
  (results_file,) = (tmp_path / "out").rglob("results_*.json")
  results = json.loads(results_file.read_text())
  assert results["config"]["model"] == "llama_jax"
  assert results["config"]["llama_jax_model"].startswith("Hugging Face LLaMA")
  piqa = results["results"]["piqa_local"]
  assert (piqa["acc,none"], piqa["acc_norm,none"]) == _metrics(our_results)
