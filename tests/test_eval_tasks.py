"""llama_jax.eval.likelihood: prompts equal lm-evaluation-harness 0.4.13's on the same items, zero-
and few-shot; released files are read, and their faults named; the custom metrics equal the
harness's.

The harness's own tasks are built from its YAML files, their datasets pointed at JSON files this
module converts from the released files in tests/data/eval (the Hugging Face schema each YAML
expects), so both sides read the same items.
"""

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from lm_eval_reference import (
  EVAL_DATA,
  HARNESS,
  MMLU_SAMPLE,
  harness_requests,
  harness_task,
  truthfulqa_docs,
)

from llama_jax.eval.likelihood import (
  GROUPS,
  MMLU_SUBJECTS,
  TASKS,
  get_tasks,
  score_crows_pairs,
  score_example,
  score_truthfulqa_mc2,
  with_fewshot,
)
from llama_jax.eval.readers import TaskDataError

TASKS_HERE = {**TASKS, "mmlu": dataclasses.replace(
    TASKS["mmlu"], files=tuple(f"mmlu/data/test/{s}_test.csv" for s in MMLU_SAMPLE),
    fewshot_files=tuple(f"mmlu/data/dev/{s}_dev.csv" for s in MMLU_SAMPLE))}


# Our task -> the harness tasks whose requests, in order, ours must equal.
OURS = {name: (task, [name]) for name, task in TASKS_HERE.items() if name in HARNESS}
OURS["mmlu"] = (TASKS_HERE["mmlu"], [f"mmlu_{subject}" for subject in MMLU_SAMPLE])
OURS["piqa_own_shots"] = (dataclasses.replace(TASKS["piqa"], fewshot_files=TASKS["piqa"].files),
                          ["piqa_own_shots"])
FEWSHOT = {name: 5 if name == "mmlu" else 2 for name, (task, _) in OURS.items()
           if task.fewshot_files}


@pytest.fixture(scope="module")
def harness_tasks(tmp_path_factory):
  """The harness's tasks (HARNESS), by name, reading our sample items."""
  directory = tmp_path_factory.mktemp("harness")
  return {name: harness_task(directory, name) for name in HARNESS}


def _our_requests(task, num_fewshot, data_dir=EVAL_DATA):
  examples = with_fewshot(task, task.examples(data_dir), data_dir, num_fewshot)
  return [(o.context, o.continuation) for example in examples for o in example.options]


@pytest.mark.parametrize("name,num_fewshot", [(name, 0) for name in OURS]
                         + list(FEWSHOT.items()))
def test_requests_equal_the_harness(harness_tasks, name, num_fewshot):
  task, harness_names = OURS[name]
  expected = harness_requests([harness_tasks[n] for n in harness_names], num_fewshot)
  assert _our_requests(task, num_fewshot) == expected


def test_an_item_drawn_twice_is_redrawn_as_the_harness_does(tmp_path):
  """With each item twice in the split shots come from, both copies of the item are sometimes
  drawn and dropped, leaving too few: the harness then draws again from the others."""
  for name in ("valid.jsonl", "valid-labels.lst"):
    lines = (EVAL_DATA / "piqa" / name).read_text().splitlines(True)[:4]
    (tmp_path / "piqa").mkdir(exist_ok=True)
    (tmp_path / "piqa" / name).write_text("".join(lines * 2))
  task, _ = OURS["piqa_own_shots"]
  harness = harness_task(tmp_path, "piqa_own_shots", data_dir=tmp_path)
  assert _our_requests(task, 5, tmp_path) == harness_requests([harness], 5)


@pytest.mark.parametrize("name", OURS)
def test_answers_and_choices_equal_the_harness(harness_tasks, name):
  """The gold option is the harness's target; option texts (what acc_norm divides by) are its
  choices."""
  task, harness_names = OURS[name]
  docs = [(t, doc) for t in (harness_tasks[n] for n in harness_names) for doc in t.eval_docs]
  examples = task.examples(EVAL_DATA)
  assert len(examples) == len(docs)
  for example, (harness, doc) in zip(examples, docs, strict=True):
    gold = harness.doc_to_text(doc) if harness.multiple_input else harness.doc_to_target(doc)
    assert example.gold == gold, example.source
    assert list(example.option_texts) == harness.doc_to_choice(doc), example.source


def test_tricky_items_read_as_expected():
  """Spot checks of the artefacts the harness's processing handles."""
  hellaswag = TASKS["hellaswag"].examples(EVAL_DATA)
  assert hellaswag[1].options[0].context == ("Home and Garden: How to clean a cast iron skillet. "
                                             "Scrub the pan while it is still warm. Use a stiff "
                                             "brush and hot water.")
  assert "[" not in "".join(hellaswag[1].option_texts)
  arc = TASKS["arc_easy"].examples(EVAL_DATA)
  assert arc[2].gold == 3 and len(arc[3].options) == 3  # answerKey "4" of labels "1"-"4"
  winogrande = TASKS["winogrande"].examples(EVAL_DATA)[2]
  assert [o.context for o in winogrande.options] == ["Kevin", "Brian"]
  assert winogrande.options[0].continuation == (" 's car broke down on the highway, so Kevin "
                                                "gave Brian a ride to work.")
  race = TASKS["race_middle"].examples(EVAL_DATA)[0]
  assert "\nTom's mother thought Max was a good friend\n" in race.options[0].context
  assert race.options[0].context.endswith("\nThe passage is mainly about  _  .")
  winogender = {e.source.rsplit(":", 1)[1]: e for e in TASKS["winogender"].examples(EVAL_DATA)}
  assert winogender["5"].options[0].context == ("The technician told someone that he could pay "
                                                "with cash. ‘He’ refers to the")
  assert [o.continuation for o in winogender["5"].options] == [" technician", " someone"]
  assert winogender["5"].subset == "male" and winogender["5"].gold == 1
  mmlu = TASKS_HERE["mmlu"].examples(EVAL_DATA)
  assert [e.subset for e in mmlu] == ["abstract_algebra"] * 3 + ["anatomy"] * 3
  assert mmlu[4].source.endswith("anatomy_test.csv:2")  # a question over two lines
  assert mmlu[4].options[0].context.startswith('Which of the following best describes the '
                                               '"anatomical position"?\n(Choose one.)\nA. ')


def test_mmlu_covers_57_subjects_five_shot_from_dev():
  mmlu = TASKS["mmlu"]
  assert len(mmlu.files) == len(set(MMLU_SUBJECTS)) == 57
  assert mmlu.default_fewshot == 5 and mmlu.fewshot_sampler == "first_n"
  example = with_fewshot(TASKS_HERE["mmlu"], TASKS_HERE["mmlu"].examples(EVAL_DATA)[3:4],
                         EVAL_DATA, 5)[0]
  assert example.options[0].context.startswith(
      "The following are multiple choice questions (with answers) about anatomy.\n\n"
      "What is the embryological origin of the hyoid bone?\n")
  assert example.options[0].context.count("\nAnswer:") == 6


def test_groups_expand_in_order_once():
  assert [t.name for t in get_tasks(["race", "piqa", "race_high"])] == [
      "race_middle", "race_high", "piqa"]
  assert [t.name for t in get_tasks(["common_sense"])] == list(GROUPS["common_sense"])
  assert {t.name: t.paper_7b for t in TASKS.values() if t.paper_7b is not None} == {
      "boolq": 76.5, "piqa": 79.8, "siqa": 48.9, "hellaswag": 76.1, "winogrande": 70.1,
      "arc_easy": 72.8, "arc_challenge": 47.6, "openbookqa": 57.2}
  with pytest.raises(ValueError, match=r"unknown tasks \['rac'\].*truthfulqa: truthfulqa_mc1"):
    get_tasks(["rac"])


def test_too_few_shots_are_refused():
  # SIQA's item is kept out of its shots: one more is drawn.
  with pytest.raises(TaskDataError, match="--num_fewshot=4 needs 5 items .* has 4"):
    with_fewshot(TASKS["siqa"], TASKS["siqa"].examples(EVAL_DATA), EVAL_DATA, 4)
  with pytest.raises(TaskDataError, match="the anatomy items of its few-shot split has 6"):
    with_fewshot(TASKS_HERE["mmlu"], TASKS_HERE["mmlu"].examples(EVAL_DATA)[3:], EVAL_DATA, 7)
  with pytest.raises(TaskDataError, match="truthfulqa_mc1 has no split"):
    with_fewshot(TASKS["truthfulqa_mc1"], [], EVAL_DATA, 1)


# --- missing and malformed files ---------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_a_missing_file_says_where_it_is_published_and_where_to_put_it(tmp_path, name):
  task = TASKS[name]
  with pytest.raises(TaskDataError) as error:
    task.examples(tmp_path)
  message = str(error.value)
  assert task.published in message and f"put its {Path(task.files[0]).name}" in message
  assert str(tmp_path / task.files[0]) in message


def _copy(tmp_path, relative, edit):
  """The sample file at tmp_path, its text edited."""
  source, target = EVAL_DATA / relative, tmp_path / relative
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(edit(source.read_text()))
  return target


def _replace_line(number, new):
  return lambda text: "".join(new if i == number else line
                              for i, line in enumerate(text.splitlines(True), 1))


def _edit_json_line(number, edit):
  def apply(text):
    lines = text.splitlines(True)
    record = json.loads(lines[number - 1])
    edit(record)
    lines[number - 1] = json.dumps(record) + "\n"
    return "".join(lines)
  return apply


def _copy_rest(tmp_path, task):
  """The task's other sample files at tmp_path."""
  for relative in task.files:
    names = [p.relative_to(EVAL_DATA) for p in (EVAL_DATA / relative).glob("*")] \
        if relative.endswith("/") else [relative]
    for name in names:
      if not (tmp_path / name).exists():
        _copy(tmp_path, name, lambda text: text)


MALFORMED = {
    "missing field": ("piqa", "piqa/valid.jsonl", _edit_json_line(2, lambda r: r.pop("sol2")),
                      ":2", "'sol2'"),
    "wrong type": ("boolq", "boolq/dev.jsonl", _edit_json_line(3, lambda r: r.update(answer="yes")),
                   ":3", "'answer'"),
    "bad JSON": ("arc_easy", "ARC-V1-Feb2018/ARC-Easy/ARC-Easy-Test.jsonl",
                 _replace_line(2, '{"id": "MCAS_2000_4_6", "question": {\n'), ":2", "JSON"),
    "too few labels": ("siqa", "socialiqa-train-dev/dev-labels.lst", lambda t: "1\n2\n", ":3",
                       "label"),
    "wrong label": ("piqa", "piqa/valid-labels.lst", _replace_line(3, "2\n"), ":3", "label"),
    "short CSV row": ("mmlu", "mmlu/data/test/anatomy_test.csv",
                      lambda t: t + "What is the largest organ?,Skin,Liver,Lung,Heart\n", ":5",
                      "'answer'"),
    "wrong CSV answer": ("mmlu", "mmlu/data/test/anatomy_test.csv",
                         lambda t: t.replace("Homeostasis,D", "Homeostasis,E"), ":4", "'answer'"),
    "empty CSV field": ("crows_pairs", "crows-pairs/data/crows_pairs_anonymized.csv",
                        lambda t: t.replace("Young people are too slow to learn how to use a "
                                            "smartphone.", ""), ":2", "'sent_less'"),
    "bad TSV id": ("winogender", "winogender-schemas/data/all_sentences.tsv",
                   lambda t: t.replace("clerk.customer.0.male.txt", "clerk.customer.0.txt"), ":32",
                   "'sentid'"),
    "no template": ("winogender", "winogender-schemas/data/templates.tsv",
                    _replace_line(9, ""), ":44", "occupation 'worker' with answer 0"),
    "bad RACE options": ("race_high", "RACE/test/high/5.txt",
                         lambda t: t.replace('"chains", ', ""), "5.txt:1", "'options'"),
    "three endings": ("hellaswag", "hellaswag/hellaswag_val.jsonl",
                      _edit_json_line(2, lambda r: r["endings"].pop()), ":2", "'endings'"),
    "mc1 answer not first": ("truthfulqa_mc1", "TruthfulQA/data/mc_task.json",
                             lambda t: t.replace('"Veins appear blue because blue light does not '
                                                 'penetrate deeply into human tissue.": 1,',
                                                 '"Veins appear blue because blue light does not '
                                                 'penetrate deeply into human tissue.": 0,'),
                             ":38", "'mc1_targets'"),
    "bad JSON array": ("truthfulqa_mc2", "TruthfulQA/data/mc_task.json",
                       lambda t: t.replace('"Why do veins appear blue?",', '"Why do veins'), ":39",
                       "JSON"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_file_names_file_line_and_field(tmp_path, case):
  name, relative, edit, line, what = MALFORMED[case]
  task = TASKS_HERE[name]
  path = _copy(tmp_path, relative, edit)
  _copy_rest(tmp_path, task)
  with pytest.raises(TaskDataError) as error:
    task.examples(tmp_path)
  message = str(error.value)
  assert str(path) in message and line in message and what in message, message


def test_sources_name_the_line_each_item_starts_on():
  items = TASKS["truthfulqa_mc2"].examples(EVAL_DATA)
  lines = (EVAL_DATA / "TruthfulQA/data/mc_task.json").read_text().splitlines()
  for example in items:
    assert lines[int(example.source.rsplit(":", 1)[1]) - 1].strip() == "{"
  assert [e.source.rsplit(":", 1)[1] for e in TASKS["crows_pairs"].examples(EVAL_DATA)] == [
      "2", "3", "4", "5", "6"]


def test_race_wants_its_directory(tmp_path):
  with pytest.raises(TaskDataError, match=r"put its middle/ directory at .*RACE/test/middle"):
    TASKS["race_middle"].examples(tmp_path)
  (tmp_path / "RACE/test/middle").mkdir(parents=True)
  with pytest.raises(TaskDataError, match="has no .txt files"):
    TASKS["race_middle"].examples(tmp_path)


# --- scores ------------------------------------------------------------------------------------


def test_crows_pairs_metrics_equal_the_harness():
  from lm_eval.tasks.crows_pairs.utils import process_results

  task = TASKS["crows_pairs"]
  example = task.examples(EVAL_DATA)[1]
  for lls in ([-31.25, -33.75], [-40.5, -38.0], [-20.0, -20.0]):
    values = task.score(task, example, lls)
    expected = process_results({}, [(ll, False) for ll in lls])
    assert {k: values[k] for k in expected} == pytest.approx(expected)
    assert values["pct_stereotype/gender"] == values["pct_stereotype"]
  assert score_crows_pairs(task, example, [-31.25, -33.75]) == {
      "likelihood_diff": 2.5, "pct_stereotype": 1.0, "likelihood_diff/gender": 2.5,
      "pct_stereotype/gender": 1.0}


def test_truthfulqa_mc2_equals_the_harness():
  from lm_eval.tasks.truthfulqa.utils import process_results_mc2

  task = TASKS["truthfulqa_mc2"]
  watermelon = task.examples(EVAL_DATA)[1]
  assert watermelon.labels == (1, 1, 1, 1, 1, 0, 0, 0, 0)
  doc = truthfulqa_docs([EVAL_DATA / task.files[0]])[1]
  lls = [-3.0, -9.5, -4.25, -6.0, -5.5, -2.0, -7.0, -8.0, -3.5]
  expected = process_results_mc2(doc, [(ll, False) for ll in lls])["acc"]
  assert task.score(task, watermelon, lls) == {"acc": pytest.approx(expected)}
  # Hand-made: true answers e^-1 + e^-2 of e^-1 + e^-2 + e^-3 + e^-4.
  two_by_two = dataclasses.replace(watermelon, labels=(1, 1, 0, 0))
  mass = (math.exp(-1) + math.exp(-2)) / sum(math.exp(-k) for k in (1, 2, 3, 4))
  assert score_truthfulqa_mc2(task, two_by_two, [-1.0, -2.0, -3.0, -4.0])["acc"] == (
      pytest.approx(mass))
  # Long answers: the harness's exp(ll) is 0/0 here, the value itself is well defined.
  assert score_truthfulqa_mc2(task, two_by_two, [-1001.0, -1002.0, -1003.0, -1004.0])["acc"] == (
      pytest.approx(mass))


def test_metrics_are_also_reported_per_subset():
  mmlu = TASKS_HERE["mmlu"]
  example = mmlu.examples(EVAL_DATA)[3]
  lls = np.where(np.arange(4) == example.gold, -1.0, -2.0)
  assert score_example(mmlu, example, lls) == {"acc": 1.0, "acc/anatomy": 1.0}
  piqa = TASKS["piqa"]
  assert set(score_example(piqa, piqa.examples(EVAL_DATA)[0], [-1.0, -2.0])) == {"acc",
                                                                                  "acc_norm"}


def test_evaluation_averages_subset_metrics_over_their_items():
  """WinoGender through evaluate_likelihood with made-up scores: acc/male over male items."""
  from llama_jax.eval.likelihood import evaluate_likelihood

  class OccupationFirst:
    """Prefers the occupation (the first option) for male and neutral items."""

    def loglikelihood(self, requests, on_done):
      results = []
      for i, request in enumerate(requests):
        refers_to_occupation = not re.search("‘(She|Her)’", request.context)
        first = i % 2 == 0
        results.append((-1.0 if first == refers_to_occupation else -2.0, False))
        on_done(i)
      return results

  task = TASKS["winogender"]
  result = evaluate_likelihood(OccupationFirst(), task, EVAL_DATA, progress=False)
  golds = {gender: [e.gold for e in task.examples(EVAL_DATA) if e.subset == gender]
           for gender in ("male", "female", "neutral")}
  assert result.metrics["acc/male"].mean == golds["male"].count(0) / len(golds["male"])
  assert result.metrics["acc/female"].mean == golds["female"].count(1) / len(golds["female"])
  assert result.metrics["acc"].mean == pytest.approx(
      (golds["male"].count(0) + golds["female"].count(1) + golds["neutral"].count(0)) / 48)
