"""llama_jax.eval.generative: released files read and their faults named; prompts and stop
sequences equal lm-evaluation-harness 0.4.13's on the same items; answers normalized, extracted
and voted as the papers do; pass@k as Chen et al. 2021; whole evaluations with canned
completions score what they should.

The harness's tasks are built from their YAML files, with their datasets pointed at JSON files
converted here from the released-format samples in tests/data/eval. Functions of a task's
utils.py that cannot be imported here (they need sympy parsers, or download the code_eval metric)
are taken from its source one by one.
"""

import ast
import dataclasses
import gzip
import json
import logging
import math
import shutil
import sys
import types
from pathlib import Path

import pytest

from llama_jax.eval import generative, sandbox
from llama_jax.eval.answers import (
  extract_gsm8k_answer,
  extract_math_answer,
  last_boxed,
  majority_vote,
  normalize_math_answer,
  normalize_qa_answer,
  pass_at_k,
  qa_exact_match,
)
from llama_jax.eval.fewshot import FEWSHOT_SEED
from llama_jax.eval.generative import (
  GENERATIVE_TASKS,
  GenerationSettings,
  evaluate_generative,
  get_generative_task,
)
from llama_jax.eval.harness import results_json, results_table
from llama_jax.eval.readers import TaskDataError

EVAL_DATA = Path(__file__).parent / "data" / "eval"


# --- the harness's own tasks ----------------------------------------------------------------


def _harness_tasks_dir() -> Path:
  from lm_eval.tasks import __file__ as tasks_init

  return Path(tasks_init).parent


def _function_from(path: Path, name: str):
  """One function of a harness utils.py, compiled on its own (the module's imports fail here)."""
  tree = ast.parse(path.read_text())
  node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
  namespace = {}
  exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
  return namespace[name]


def _jsonl(path: Path) -> list[dict]:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt") as f:
    return [json.loads(line) for line in f if line.strip()]


def _triviaqa_docs(path: Path) -> list[dict]:
  """mandarjoshi/trivia_qa's schema, from the released file."""
  return [{"question": r["Question"], "question_id": r["QuestionId"], "answer": {
      "aliases": r["Answer"]["Aliases"], "normalized_aliases": r["Answer"]["NormalizedAliases"],
      "value": r["Answer"]["Value"], "normalized_value": r["Answer"]["NormalizedValue"],
      "type": r["Answer"]["Type"]}} for r in json.loads(path.read_text())["Data"]]


def _math_docs(directory: Path) -> list[dict]:
  """EleutherAI/hendrycks_math's schema, in our reading order; `answer` stands for what the
  harness's process_docs adds (not part of any prompt)."""
  paths = sorted(directory.glob("*/*.json"), key=lambda p: (p.parent.name, int(p.stem)))
  return [{**json.loads(p.read_text()), "answer": ""} for p in paths]


def _mbpp_test_docs(path: Path) -> list[dict]:
  """google-research-datasets/mbpp "full" test split: task ids 11-510."""
  return [r for r in _jsonl(path) if 11 <= r["task_id"] <= 510]


def harness_requests(directory: Path, yaml: str, splits: dict[str, list[dict]],
                     num_fewshot: int, **changes) -> list[tuple[str, dict]]:
  """(context, generation kwargs) of the harness's task `yaml` on our items, in order."""
  from lm_eval.api.task import ConfigurableTask
  from lm_eval.tasks._yaml_loader import load_yaml

  config = load_yaml(_harness_tasks_dir() / yaml, resolve_func=False)
  for key in ("process_docs", "process_results", "filter_list"):
    config.pop(key, None)
  config["metric_list"] = [{"metric": "exact_match", "aggregation": "mean",
                            "higher_is_better": True}]
  config.update(changes)
  data_files = {}
  for split, docs in splits.items():
    data_files[split] = str(directory / f"{split}.jsonl")
    Path(data_files[split]).write_text("".join(json.dumps(doc) + "\n" for doc in docs))
  config.update(dataset_path="json", dataset_name=None, dataset_kwargs={
      "data_files": data_files, "cache_dir": str(directory / "cache")})
  task = ConfigurableTask(config=config)
  task.set_config(key="num_fewshot", value=num_fewshot)
  task.set_fewshot_seed(seed=FEWSHOT_SEED)
  task.build_all_requests(rank=0, world_size=1)
  return [instance.args for instance in task.instances]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """tests/data/eval, with an NQ-open training split: the dev sample's last eight questions
  (the released train file's format)."""
  directory = tmp_path_factory.mktemp("data")
  for name in ("nq_open", "triviaqa-rc", "gsm8k", "MATH", "humaneval", "mbpp"):
    shutil.copytree(EVAL_DATA / name, directory / name)
  lines = (EVAL_DATA / "nq_open" / "NQ-open.dev.jsonl").read_text().splitlines(True)
  (directory / "nq_open" / "NQ-open.train.jsonl").write_text("".join(lines[-8:]))
  return directory


def _harness_cases(data_dir: Path):
  """Our task -> (harness YAML, its splits, changes to its config) on the same items."""
  tasks_dir = _harness_tasks_dir()
  return {
      "nq_open": ("nq_open/nq_open.yaml", {
          "validation": _jsonl(data_dir / "nq_open/NQ-open.dev.jsonl"),
          "train": _jsonl(data_dir / "nq_open/NQ-open.train.jsonl")}, {}),
      "triviaqa": ("triviaqa/default.yaml", {
          "validation": _triviaqa_docs(data_dir / "triviaqa-rc/qa/wikipedia-dev.json"),
          "train": _triviaqa_docs(data_dir / "triviaqa-rc/qa/wikipedia-train.json")}, {}),
      "gsm8k": ("gsm8k/gsm8k-cot.yaml", {"test": _jsonl(data_dir / "gsm8k/test.jsonl")}, {}),
      "math": ("minerva_math/minerva_math_algebra.yaml", {
          "test": _math_docs(data_dir / "MATH/test")}, {
          "training_split": None,
          "doc_to_text": _function_from(tasks_dir / "minerva_math/utils.py", "doc_to_text"),
          "fewshot_config": {"sampler": "first_n", "samples": _function_from(
              tasks_dir / "minerva_math/utils.py", "list_fewshot_samples")()}}),
      "humaneval": ("humaneval/humaneval.yaml", {
          "test": _jsonl(data_dir / "humaneval/HumanEval.jsonl.gz")}, {}),
      "mbpp": ("mbpp/mbpp.yaml", {"test": _mbpp_test_docs(data_dir / "mbpp/mbpp.jsonl")}, {
          "fewshot_config": {"sampler": "first_n", "samples": _function_from(
              tasks_dir / "mbpp/utils.py", "list_fewshot_samples")()}}),
  }


PROMPT_CASES = [("nq_open", 0), ("nq_open", 1), ("nq_open", 5), ("triviaqa", 0),
                ("triviaqa", 3), ("gsm8k", 0), ("gsm8k", 8), ("math", 0), ("math", 4),
                ("humaneval", 0), ("mbpp", 0), ("mbpp", 3)]


@pytest.mark.parametrize("name,num_fewshot", PROMPT_CASES)
def test_prompts_and_stops_equal_the_harness(tmp_path, data_dir, name, num_fewshot):
  yaml, splits, changes = _harness_cases(data_dir)[name]
  expected = harness_requests(tmp_path, yaml, splits, num_fewshot, **changes)
  task = GENERATIVE_TASKS[name]
  prompts, _ = task.prompts(task.items(data_dir), data_dir, num_fewshot)
  assert prompts == [context for context, _ in expected]
  assert all(list(task.settings.stop) == kwargs["until"] for _, kwargs in expected)


def test_shots_from_the_evaluated_split_leave_the_item_out_as_the_harness(tmp_path, data_dir,
                                                                          caplog):
  """Without NQ-open's training file, shots come from the dev file, each item kept out of its own
  (the harness's sampler when its few-shot split is the split it evaluates)."""
  directory = tmp_path / "data"
  shutil.copytree(EVAL_DATA / "nq_open", directory / "nq_open")
  task = GENERATIVE_TASKS["nq_open"]
  with caplog.at_level(logging.WARNING):
    prompts, source = task.prompts(task.items(directory), directory, 5)
  assert "NQ-open.train.jsonl not found" in caplog.text and "left out" in source
  docs = _jsonl(directory / "nq_open/NQ-open.dev.jsonl")
  expected = harness_requests(tmp_path, "nq_open/nq_open.yaml", {"validation": docs}, 5,
                              training_split=None, validation_split=None,
                              test_split="validation", fewshot_split="validation")
  assert prompts == [context for context, _ in expected]
  for doc, prompt in zip(docs, prompts, strict=True):
    assert prompt.count(f"Q: {doc['question']}?") == 1


def test_mbpp_shots_are_tasks_2_to_4_and_only_the_test_ids_are_evaluated(data_dir):
  task = GENERATIVE_TASKS["mbpp"]
  assert [item.task_id for item in task.items(data_dir)] == ["11", "12"]
  shots = generative._mbpp_shots(task, data_dir)
  assert [shot.task_id for shot in shots] == ["2", "3", "4"]
  assert shots[0].target.endswith("return (res) \n[DONE]")


# --- reading released files -----------------------------------------------------------------


def test_readers_on_the_released_samples(data_dir):
  nq = GENERATIVE_TASKS["nq_open"].items(data_dir)
  assert len(nq) == 12 and nq[0].answers == ("14 December 1972 UTC", "December 1972")
  assert nq[0].prompt == "Q: when was the last time anyone was on the moon?\nA:"
  assert nq[0].source.endswith("NQ-open.dev.jsonl:1")

  gsm8k = GENERATIVE_TASKS["gsm8k"].items(data_dir)
  assert [item.answers[0] for item in gsm8k] == ["18", "3", "70000", "540", "20", "64", "260",
                                                 "160", "45", "460"]

  humaneval = GENERATIVE_TASKS["humaneval"].items(data_dir)
  assert [item.task_id for item in humaneval] == [f"HumanEval/{i}" for i in range(5)]
  assert humaneval[0].program_tests.endswith("\ncheck(has_close_elements)\n")

  math_items = GENERATIVE_TASKS["math"].items(data_dir)
  assert [(item.subset, Path(item.source).name) for item in math_items] == [
      ("algebra", "1.json:1"), ("algebra", "2.json:1"), ("algebra", "12.json:1"),
      ("number_theory", "5.json:1"), ("prealgebra", "3.json:1")]
  assert [item.answers for item in math_items] == [("4",), ("\\frac{3}{4}",), ("3",), ("7",), ()]

  trivia = GENERATIVE_TASKS["triviaqa"].items(data_dir)
  assert trivia[1].prompt == "Question: Who wrote the novel 'Pride and Prejudice'??\nAnswer:"
  assert trivia[1].target == "Jane Austen" and "austen jane" in trivia[1].answers
  # The dev file is indented: each item's line is where it starts; the train file is one line.
  dev = (data_dir / "triviaqa-rc/qa/wikipedia-dev.json").read_text().splitlines()
  line = int(trivia[2].source.split(":")[-1].split()[0])
  assert dev[line - 1].strip() == "{" and '"tc_3"' in "".join(dev[line:line + 30])
  assert trivia[2].source.endswith("(Data[2])")
  train = GENERATIVE_TASKS["triviaqa"].read(
      GENERATIVE_TASKS["triviaqa"], data_dir / "triviaqa-rc/qa/wikipedia-train.json")
  assert [item.source.rsplit(":", 1)[1] for item in train[:2]] == ["1 (Data[0])", "1 (Data[1])"]


def _write(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".gz":
    path.write_bytes(gzip.compress(text.encode()))
  else:
    path.write_text(text)
  return path


_NQ_ROW = '{"question": "q", "answer": ["a"]}\n'
_HUMANEVAL_ROW = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "  1\n",
                  "test": "def check(c):\n  pass\n", "entry_point": "f"}
_MBPP_ROW = {"text": "t", "code": "c", "task_id": 11, "test_setup_code": "",
             "test_list": ["assert True"], "challenge_test_list": []}
_MATH_ROW = {"problem": "p", "level": "Level 1", "type": "Algebra", "solution": "\\boxed{1}"}
_TRIVIA = {"Data": [{"Question": "q?", "QuestionId": "a", "Answer": {
    "Value": "v", "Aliases": ["v"], "NormalizedAliases": ["v"]}}], "Version": 1.0}


def _without(record: dict, key: str) -> dict:
  return {k: v for k, v in record.items() if k != key}


MALFORMED = {
    "nq_open field": ("nq_open", "nq_open/NQ-open.dev.jsonl", _NQ_ROW + '{"question": "q"}\n',
                      r"NQ-open.dev.jsonl:2: field 'answer' is missing"),
    "nq_open empty answers": ("nq_open", "nq_open/NQ-open.dev.jsonl",
                              '{"question": "q", "answer": []}\n',
                              r"NQ-open.dev.jsonl:1: field 'answer' should hold at least one"),
    "nq_open json": ("nq_open", "nq_open/NQ-open.dev.jsonl", _NQ_ROW + _NQ_ROW + "{oops\n",
                     r"NQ-open.dev.jsonl:3: not valid JSON"),
    "gsm8k answer": ("gsm8k", "gsm8k/test.jsonl", '{"question": "q", "answer": "so 4"}\n',
                     r"test.jsonl:1: field 'answer' should end with '#### <number>'"),
    "humaneval field": ("humaneval", "humaneval/HumanEval.jsonl.gz",
                        json.dumps(_without(_HUMANEVAL_ROW, "entry_point")) + "\n",
                        r"HumanEval.jsonl.gz:1: field 'entry_point' is missing"),
    "humaneval entry point": ("humaneval", "humaneval/HumanEval.jsonl.gz",
                              json.dumps({**_HUMANEVAL_ROW, "entry_point": "f()"}) + "\n",
                              r"HumanEval.jsonl.gz:1: field 'entry_point' should be a Python"),
    "mbpp type": ("mbpp", "mbpp/mbpp.jsonl", json.dumps({**_MBPP_ROW, "task_id": "11"}) + "\n",
                  r"mbpp.jsonl:1: field 'task_id' should be int"),
    "mbpp tests": ("mbpp", "mbpp/mbpp.jsonl", json.dumps({**_MBPP_ROW, "test_list": [1]}) + "\n",
                   r"mbpp.jsonl:1: field 'test_list' should be a list of strings"),
    "math field": ("math", "MATH/test/algebra/7.json", json.dumps(_without(_MATH_ROW, "solution")),
                   r"algebra/7.json:1: field 'solution' is missing"),
    "math json": ("math", "MATH/test/algebra/7.json", '{\n  "problem": oops\n}',
                  r"algebra/7.json:2: not valid JSON"),
    "triviaqa field": ("triviaqa", "triviaqa-rc/qa/wikipedia-dev.json", json.dumps(
        {"Data": [*_TRIVIA["Data"], {"Question": "q?", "Answer": {"Value": "v"}}]}, indent=1),
        r"wikipedia-dev.json:16 \(Data\[1\]\): field 'Answer.Aliases' is missing"),
    "triviaqa layout": ("triviaqa", "triviaqa-rc/qa/wikipedia-dev.json", "[]",
                        r"wikipedia-dev.json:1: expected a JSON object with an array 'Data'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_named_by_file_line_and_field(tmp_path, case):
  name, relative, text, message = MALFORMED[case]
  _write(tmp_path / relative, text)
  with pytest.raises(TaskDataError, match=message):
    GENERATIVE_TASKS[name].items(tmp_path)


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(TaskDataError, match=r"gsm8k/test.jsonl not found. GSM8k is published at "
                                          r"https://github.com/openai/grade-school-math"):
    GENERATIVE_TASKS["gsm8k"].items(tmp_path)
  (tmp_path / "MATH/test").mkdir(parents=True)
  with pytest.raises(TaskDataError, match=r"has no <subject>/<number>.json files"):
    GENERATIVE_TASKS["math"].items(tmp_path)
  (tmp_path / "humaneval").mkdir()
  (tmp_path / "humaneval/HumanEval.jsonl.gz").write_text("not gzip")
  with pytest.raises(TaskDataError, match=r"HumanEval.jsonl.gz: cannot be read"):
    GENERATIVE_TASKS["humaneval"].items(tmp_path)
  _write(tmp_path / "mbpp/mbpp.jsonl", json.dumps({**_MBPP_ROW, "task_id": 2}) + "\n")
  with pytest.raises(TaskDataError, match=r"lacks task ids \[3, 4\], the paper's three shots"):
    GENERATIVE_TASKS["mbpp"].prompts([], tmp_path, 3)


def test_task_lookup_and_settings_errors():
  assert get_generative_task("gsm8k") is GENERATIVE_TASKS["gsm8k"]
  with pytest.raises(ValueError, match=r"unknown generative task 'gsm9k'; known: nq_open, "):
    get_generative_task("gsm9k")
  with pytest.raises(ValueError, match=r"top_p=0 must be in \(0, 1\].*; num_samples=0 must"):
    GenerationSettings(max_new_tokens=8, top_p=0, num_samples=0)
  with pytest.raises(ValueError, match=r"max_new_tokens=1.5 must be a positive integer"):
    GenerationSettings(max_new_tokens=1.5)
  with pytest.raises(ValueError, match=r"stop=\['x'\] must be a tuple"):
    GenerationSettings(max_new_tokens=8, stop=["x"])
  with pytest.raises(ValueError, match="gsm8k: num_fewshot=9, but its prompt has 8 shots"):
    GENERATIVE_TASKS["gsm8k"].prompts([], EVAL_DATA, 9)
  with pytest.raises(ValueError, match="humaneval has no shots"):
    GENERATIVE_TASKS["humaneval"].prompts([], EVAL_DATA, 1)


def test_paper_settings_table():
  """The rows of the table in generative.py."""
  rows = {name: (task.default_fewshot, s.num_samples, s.temperature, s.top_p, task.ks,
                 task.paper_metric) for name, task in GENERATIVE_TASKS.items()
          for s in [task.settings]}
  assert rows == {
      "nq_open": (0, 1, 0.0, 1.0, (1,), "exact_match"),
      "triviaqa": (0, 1, 0.0, 1.0, (1,), "exact_match"),
      "triviaqa_unfiltered": (0, 1, 0.0, 1.0, (1,), "exact_match"),
      "gsm8k": (8, 1, 0.0, 1.0, (1,), "exact_match"),
      "gsm8k_maj100": (8, 100, 0.6, 0.95, (1,), "maj1@100"),
      "math": (4, 1, 0.0, 1.0, (1,), "exact_match"),
      "math_maj256": (4, 256, 0.6, 0.95, (1,), "maj1@256"),
      "humaneval": (0, 1, 0.1, 0.95, (1,), "pass@1"),
      "humaneval_pass100": (0, 200, 0.8, 0.95, (1, 10, 100), "pass@100"),
      "mbpp": (3, 1, 0.1, 0.95, (1,), "pass@1"),
      "mbpp_pass80": (3, 80, 0.8, 0.95, (1, 10, 80), "pass@80"),
  }


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,normalized", [
    ("The Impalas", "impalas"), ("  A  Tale of Two Cities! ", "tale of two cities"),
    ("an apple, the pear", "apple pear"), ("54\u00a0Mbit/s", "54 mbits"),
    ("Theatre", "theatre"), ("U.S.A.", "usa"), ("", "")])
def test_qa_normalization_is_squads(text, normalized):
  assert normalize_qa_answer(text) == normalized


def test_qa_exact_match_takes_the_best_accepted_answer():
  assert qa_exact_match("the bob russell.", ["Bobby Scott", "Bob Russell"]) == 1.0
  assert qa_exact_match("Bob", ["Bobby Scott", "Bob Russell"]) == 0.0
  assert qa_exact_match("", ["b"]) == 0.0
  assert qa_exact_match("the", ["a"]) == 0.0  # nothing left to compare is no answer


@pytest.mark.parametrize("completion,answer", [
    ("Janet has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. The answer is 18.", "18"),
    ("The answer is $1,000.", "1000"), ("The answer is 18.00", "18"), ("#### 72", "72"),
    ("the answer is: -3.5 dollars", "-3.5"), ("He has 5 + 3 = 8 apples, then 9 pears.", "9"),
    ("The answer is 7. Then 12 more.", "7"), ("The answer is unclear, maybe 4", "4"),
    ("No numbers here.", None), ("-0", "0")])
def test_gsm8k_answer_extraction(completion, answer):
  assert extract_gsm8k_answer(completion) == answer


@pytest.mark.parametrize("text,boxed", [
    ("so $x = \\boxed{4}$.", "4"), ("\\boxed{\\frac{1}{2}} and then \\boxed{\\dfrac{3}{4}}",
                                    "\\dfrac{3}{4}"),
    ("\\fbox{7}", "7"), ("\\boxed{1} or \\fbox{2}", "2"), ("$\\boxed 5$", "5"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"), ("\\boxed{unclosed", None), ("no box", None),
    ("\\boxed{a{b}c}", "a{b}c")])
def test_last_boxed_answer_with_matched_braces(text, boxed):
  assert last_boxed(text) == boxed


# Hand-made pairs that must normalize alike (Hendrycks et al. 2021's strip_string rules, and ours).
MATH_EQUAL = [
    ("\\dfrac{3}{4}", "\\frac34"), ("\\tfrac{1}{2}", "0.5"), ("\\frac{1}{2}", ".5"),
    ("3/4", "\\frac{3}{4}"), ("x = 5", "5"), ("k=5", "5"), ("90^\\circ", "90"),
    ("90^{\\circ}", "90"), ("\\$10", "10"), ("50\\%", "50"), ("5 \\text{ cm}", "5"),
    ("5\\text{cm}", "5"), ("\\left( 1, 2 \\right)", "(1,2)"), ("\\sqrt3", "\\sqrt{3}"),
    ("\\sqrt 3", "\\sqrt{3}"), ("2\\sqrt{2}", "2\\sqrt2"), ("\\frac\\pi2", "\\frac{\\pi}{2}"),
    ("10.", "10"), ("$24$", "24"), ("1,\\!000", "1,000"), ("\\frac{\\frac12}{3}",
                                                            "\\frac{\\frac{1}{2}}{3}"),
    ("\\sqrt[3]x", "\\sqrt[3]{x}"), ("0.25", "0.25"), (" .25", "0.25"),
]
MATH_DIFFERENT = [("\\frac{1}{2}", "\\frac{2}{4}"), ("3", "-3"), ("x+y=5", "5"),
                  ("\\text{(A)}", "(A)"), ("10", "10.5")]


@pytest.mark.parametrize("a,b", MATH_EQUAL)
def test_math_answers_that_normalize_alike(a, b):
  assert normalize_math_answer(a) == normalize_math_answer(b)


@pytest.mark.parametrize("a,b", MATH_DIFFERENT)
def test_math_answers_that_stay_apart(a, b):
  assert normalize_math_answer(a) != normalize_math_answer(b)


def test_math_answer_extraction():
  minerva = "so the answer is 3/4.\nFinal Answer: The final answer is $\\dfrac{3}{4}$. I hope it"
  assert extract_math_answer(minerva + " is correct.") == "\\frac{3}{4}"
  assert extract_math_answer(minerva) == "\\frac{3}{4}"  # cut short: up to the end
  assert extract_math_answer("Final Answer: The final answer is $\\boxed{7}$.") == "7"
  assert extract_math_answer("Thus $x = \\boxed{\\frac12}$.") == "\\frac{1}{2}"
  assert extract_math_answer("I give up.") is None
  assert extract_math_answer("Final Answer: The final answer is $$. I hope") is None


def test_majority_vote():
  assert majority_vote(["3", "4", "4", "3", "5"]) == "3"  # tie: the first to appear
  assert majority_vote(["4", "3", "3", "4"]) == "4"
  assert majority_vote([None, None, "2", "1", "1"]) == "1"  # no-answer samples do not vote
  assert majority_vote([None, None, "2"]) == "2"
  assert majority_vote([None, None]) is None


def _exact_pass_at_k(n, c, k):
  return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k():
  assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
  assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0
  assert pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 10, 10) == 1.0
  assert pass_at_k(10, 1, 10) == 1.0 and pass_at_k(4, 2, 3) == 1.0  # every draw holds a pass
  for n, c, k in [(5, 2, 2), (10, 3, 5), (200, 17, 1), (200, 17, 10), (200, 17, 100),
                  (80, 1, 80), (80, 79, 1)]:
    assert pass_at_k(n, c, k) == pytest.approx(_exact_pass_at_k(n, c, k), abs=1e-12)
  assert pass_at_k(1000, 1, 1) == pytest.approx(0.001, rel=1e-12)
  with pytest.raises(ValueError, match="1 <= k <= n"):
    pass_at_k(5, 2, 6)


# --- whole evaluations with canned completions ---------------------------------------------


def canned_generate(task, data_dir, completions_of, calls=None):
  """A `generate` that answers each item's prompt with completions_of(item index, item)."""
  items = task.items(data_dir)

  def generate(prompts, settings):
    if calls is not None:
      calls.append((len(prompts), settings))
    out = []
    for prompt in prompts:
      index = next(i for i, item in enumerate(items) if prompt.endswith(item.prompt))
      texts = completions_of(index, items[index])
      out.append(texts[:settings.num_samples] if len(texts) > 1 else texts)
    return out

  return generate


def _metric_means(result):
  return {name: metric.mean for name, metric in result.metrics.items()}


def test_nq_open_exact_match_end_to_end(data_dir):
  task = GENERATIVE_TASKS["nq_open"]
  canned = {0: " 14 December 1972 UTC", 1: " bob russell", 2: " One Season!", 3: " the 2017",
            4: " North Carolina", 5: "", 9: " 54 Mbit/s"}
  calls = []
  generate = canned_generate(task, data_dir, lambda i, item: [canned.get(i, " xyz")], calls)
  result = evaluate_generative(generate, "nq_open", data_dir, num_fewshot=5, progress=False)
  assert result.n == 12 and result.num_fewshot == 5
  assert _metric_means(result) == {"exact_match": 5 / 12, "no_answer": 1 / 12}
  assert [n for n, _ in calls] == [12] and calls[0][1] == task.settings
  sample = result.samples[1]
  assert sample["prediction"] == "bob russell" and sample["exact_match"] == 1.0
  assert sample["gold"] == ["Bobby Scott", "Bob Russell"] and sample["prompt"].startswith(
      "Answer these questions:\n\nQ: ")
  assert result.as_json()["fewshot_source"] == "nq_open/NQ-open.train.jsonl"
  assert result.as_json()["generation"]["stop"] == ["\n", ".", ","]


def test_triviaqa_accepts_aliases_end_to_end(data_dir):
  canned = {0: " the red planet", 1: " Austen, Jane", 2: " gold", 3: " The Eternal City"}
  task = GENERATIVE_TASKS["triviaqa"]
  generate = canned_generate(task, data_dir, lambda i, item: [canned[i]])
  result = evaluate_generative(generate, task, data_dir, progress=False)
  assert [s["exact_match"] for s in result.samples] == [1.0, 1.0, 0.0, 1.0]


def test_gsm8k_exact_match_and_maj1_at_k_end_to_end(data_dir):
  task = GENERATIVE_TASKS["gsm8k_maj100"]

  def completions(index, item):
    gold = item.answers[0]
    return {0: [f"So {gold}. The answer is {gold}.", "The answer is 1.", "The answer is 2."],
            1: ["The answer is 7.", f"The answer is {gold}.", f"That is {gold} bolts."],
            2: ["I am not sure.", "No idea.", "The answer is 70,000."],  # gold 70000
            3: ["The answer is 1.", "The answer is 2.", "The answer is 540."],  # tie: 1 first
            }.get(index, ["Let me think.", "Hmm.", "Hmm."])

  generate = canned_generate(task, data_dir, completions)
  result = evaluate_generative(generate, task, data_dir, num_samples=3, limit=6, progress=False)
  assert result.n == 6 and result.num_fewshot == 8
  assert _metric_means(result) == pytest.approx({
      "exact_match": 1 / 6, "maj1@3": 3 / 6, "no_answer": 3 / 6, "no_gold_answer": 0.0,
      "no_answer_samples": (2 / 3 + 2 * 1.0) / 6})
  assert result.samples[3]["extracted"] == ["1", "2", "540"]
  assert result.samples[3]["majority"] == "1"
  assert result.samples[0]["prompt"].startswith("Q: There are 15 trees in the grove.")
  assert result.as_json()["generation"]["num_samples"] == 3


def test_math_metrics_count_items_without_a_boxed_answer(data_dir):
  task = GENERATIVE_TASKS["math"]
  canned = {0: "Final Answer: The final answer is $4$. I hope it is correct.",
            1: "We get $\\boxed{\\frac34}$.",  # gold \dfrac{3}{4}
            2: "Final Answer: The final answer is $-3$. I hope it is correct.",  # gold 3
            3: "The remainder is 7.",  # no answer could be read
            4: "Final Answer: The final answer is No. I hope it is correct."}  # no gold
  generate = canned_generate(task, data_dir, lambda i, item: [canned[i]])
  result = evaluate_generative(generate, task, data_dir, progress=False)
  metrics = result.metrics
  assert result.n == 5
  assert (metrics["exact_match"].mean, metrics["exact_match"].n) == (0.5, 4)
  assert (metrics["no_gold_answer"].mean, metrics["no_gold_answer"].n) == (0.2, 5)
  assert (metrics["no_answer"].mean, metrics["no_answer"].n) == (0.25, 4)
  assert metrics["exact_match/algebra"].mean == pytest.approx(2 / 3)
  assert metrics["exact_match/number_theory"].mean == 0.0
  assert metrics["no_gold_answer/prealgebra"].mean == 1.0
  assert result.as_json()["exact_match_n"] == 4
  table = results_table([result])
  assert "exact_match *" in table and "no_gold_answer" in table
  assert results_json([result], {})["results"]["math"]["no_gold_answer"] == 0.2


def test_generate_that_returns_the_wrong_shape_is_refused(data_dir):
  def generate(prompts, settings):
    return [["a"]] * (len(prompts) - 1)

  with pytest.raises(ValueError, match="generate returned 9 results for 10 prompts"):
    evaluate_generative(generate, "gsm8k", data_dir, progress=False)

  def generate_one(prompts, settings):
    return [["a"] for _ in prompts]

  with pytest.raises(ValueError, match="gsm8k: num_samples=2 with greedy decoding"):
    evaluate_generative(generate_one, "gsm8k", data_dir, num_samples=2, progress=False)
  with pytest.raises(ValueError, match="expected a list of 2 strings"):
    evaluate_generative(generate_one, "gsm8k", data_dir, num_samples=2, temperature=0.5,
                        progress=False)


@dataclasses.dataclass
class FakeOutcome:
  passed: bool
  status: str


@pytest.fixture
def fake_sandbox(monkeypatch):
  """A stand-in for llama_jax.eval.sandbox: a program passes unless it says BROKEN, times out if
  it says SLOW, and runs nothing; the programs it was given are kept."""
  seen = []

  def run_many(programs, *, tests, workers, timeout_s, progress=False):
    seen.append((list(programs), list(tests), workers, timeout_s))
    return [FakeOutcome(False, "timeout") if "SLOW" in p else
            FakeOutcome("BROKEN" not in p, "failed" if "BROKEN" in p else "passed")
            for p in programs]

  module = types.ModuleType("llama_jax.eval.sandbox")
  module.run_many, module.Tests = run_many, sandbox.Tests
  monkeypatch.setitem(sys.modules, "llama_jax.eval.sandbox", module)
  return seen


def test_humaneval_pass_at_k_end_to_end(data_dir, fake_sandbox):
  task = GENERATIVE_TASKS["humaneval_pass100"]
  solutions = [r["canonical_solution"] for r in _jsonl(data_dir / "humaneval/HumanEval.jsonl.gz")]

  def completions(index, item):
    good, bad, slow = solutions[index], "    return BROKEN\n", "    while SLOW: pass\n"
    return [[good] * 4, [good, good, bad, bad], [bad] * 4, [slow, good, bad, bad],
            [good, slow, slow, slow]][index]

  generate = canned_generate(task, data_dir, completions)
  result = evaluate_generative(generate, task, data_dir, num_samples=4, workers=3, timeout_s=2.5,
                               progress=False)
  programs, tests, workers, timeout_s = fake_sandbox[0]
  assert (len(programs), workers, timeout_s) == (20, 3, 2.5)
  first = _jsonl(data_dir / "humaneval/HumanEval.jsonl.gz")[0]
  assert programs[0] == first["prompt"] + first["canonical_solution"]
  assert tests[0] == sandbox.Tests("\n" + first["test"] + "\n" + "check(has_close_elements)\n",
                                   setup=first["prompt"], calls=("has_close_elements",))
  # pass@1 = c/n per item; pass@10 and pass@100 need more than the 4 samples drawn.
  means = _metric_means(result)
  assert means == pytest.approx({"pass@1": (1 + 0.5 + 0 + 0.25 + 0.25) / 5,
                                 "sandbox_timeout": (0.25 + 0.75) / 5,
                                 "sandbox_killed": 0.0, "sandbox_denied": 0.0,
                                 "sandbox_exited_early": 0.0})
  assert result.samples[3]["statuses"] == ["timeout", "passed", "failed", "failed"]
  assert result.samples[3]["task_id"] == "HumanEval/3"


def test_mbpp_programs_and_pass_at_k_end_to_end(data_dir, fake_sandbox):
  task = GENERATIVE_TASKS["mbpp_pass80"]
  generate = canned_generate(task, data_dir, lambda i, item: [
      "def add_numbers(a, b):\n  return a + b\n", "BROKEN"] * 5 if i == 0 else ["BROKEN"] * 10)
  result = evaluate_generative(generate, task, data_dir, num_samples=10, progress=False)
  programs, tests = fake_sandbox[0][:2]
  assert programs[0] == "def add_numbers(a, b):\n  return a + b\n"
  assert tests[0] == sandbox.Tests("\nassert add_numbers(1, 2) == 3\nassert add_numbers(-1, 1) "
                                   "== 0\nassert add_numbers(10, 5) == 15\n")
  assert programs[10] == "import math\nBROKEN"
  assert tests[10].setup == "import math\n"  # the setup serves the tests in their own process
  assert tests[10].code.startswith("\nassert math.isclose(")
  assert result.metrics["pass@1"].mean == pytest.approx(0.25)
  assert result.metrics["pass@10"].mean == pytest.approx(0.5)
  assert "pass@80" not in result.metrics  # more than the samples drawn
  assert result.samples[0]["prompt"].startswith("You are an expert Python programmer, and here "
                                                "is your task: Write a function to find the "
                                                "similar elements")


def test_code_through_the_sandbox(data_dir):
  """Canonical solutions pass and a broken one fails in the real sandbox."""
  task = GENERATIVE_TASKS["humaneval"]
  solutions = [r["canonical_solution"] for r in _jsonl(data_dir / "humaneval/HumanEval.jsonl.gz")]
  generate = canned_generate(task, data_dir, lambda i, item: [
      solutions[i] if i != 2 else "    return 'wrong'\n"])
  result = evaluate_generative(generate, task, data_dir, workers=4, progress=False)
  assert [s["passed"] for s in result.samples] == [[True], [True], [False], [True], [True]]
  assert result.metrics["pass@1"].mean == pytest.approx(0.8)
  mbpp = GENERATIVE_TASKS["mbpp"]
  shots = {"11": "def add_numbers(a, b):\r\n  return a + b",
           "12": "def circle_area(r):\r\n  return math.pi * r * r"}  # math from test_setup_code
  generate = canned_generate(mbpp, data_dir, lambda i, item: [shots[item.task_id]])
  result = evaluate_generative(generate, mbpp, data_dir, workers=2, progress=False)
  assert result.metrics["pass@1"].mean == 1.0
