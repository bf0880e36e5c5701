"""lm-evaluation-harness as the reference for llama_jax.eval: its own tasks built offline from
the released-format samples in tests/data/eval, and its `hf` model on a Hugging Face LLaMA.

Each harness task is built from its YAML file with its dataset pointed at JSON files converted
here from the released files (the Hugging Face schema each YAML expects), so the harness and our
tasks read the same items.
"""

import csv
import json
import re
from pathlib import Path

import torch
from lm_eval.models.huggingface import HFLM
from transformers import LlamaForCausalLM

from llama_jax.eval.fewshot import FEWSHOT_SEED
from llama_jax.eval.likelihood import TASKS
from llama_jax.testing.hf_reference import SentencePieceLlamaTokenizer

EVAL_DATA = Path(__file__).parent / "data" / "eval"
# MMLU's sample holds two subjects; the task reads whichever subjects' files it is given.
MMLU_SAMPLE = ("abstract_algebra", "anatomy")


def hf_lm(directory: Path, batch_size: int = 8) -> HFLM:
  """The harness's `hf` model on a Hugging Face LLaMA directory, in float32, tokenizing with
  SentencePiece (hf_reference)."""
  model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
  tokenizer = SentencePieceLlamaTokenizer(directory / "tokenizer.model")
  return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


# --- the released files in the harness's dataset schemas --------------------------------------


def _jsonl(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _labels(path: Path) -> list[str]:
  return path.read_text().split()


def _tsv(path: Path) -> list[list[str]]:
  return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def _boolq(paths):
  return [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["answer"])}
          for i, r in enumerate(_jsonl(paths[0]))]


def _labelled(paths, kind=str):
  """A JSONL file's records with the label of its labels file, as `kind`."""
  records, labels = _jsonl(paths[0]), _labels(paths[1])
  return [{**r, "label": kind(label)} for r, label in zip(records, labels, strict=True)]


def _piqa(paths):
  return _labelled(paths, int)


def _siqa(paths):
  return _labelled(paths)


def _hellaswag(paths):
  return [{**r, "label": str(r["label"])} for r in _jsonl(paths[0])]


def _winogrande(paths):
  return _jsonl(paths[0])


def _choices(question):
  return {"text": [c["text"] for c in question["choices"]],
          "label": [c["label"] for c in question["choices"]]}


def _arc(paths):
  return [{"id": r["id"], "question": r["question"]["stem"], "choices": _choices(r["question"]),
           "answerKey": r["answerKey"]} for r in _jsonl(paths[0])]


def _openbookqa(paths):
  return [{"id": r["id"], "question_stem": r["question"]["stem"],
           "choices": _choices(r["question"]), "answerKey": r["answerKey"]}
          for r in _jsonl(paths[0])]


def _race(paths):
  """EleutherAI/race: one document per article, its questions as a Python literal."""
  docs = []
  for path in sorted(paths[0].glob("*.txt")):
    r = json.loads(path.read_text())
    problems = [{"question": q, "answer": a, "options": o}
                for q, a, o in zip(r["questions"], r["answers"], r["options"], strict=True)]
    docs.append({"article": r["article"], "problems": repr(problems), "example_id": r["id"]})
  return docs


def _mmlu_subject(path: Path) -> list[dict]:
  with open(path, newline="") as f:
    return [{"question": row[0], "subject": path.name.rsplit("_", 1)[0], "choices": row[1:5],
             "answer": "ABCD".index(row[5])} for row in csv.reader(f)]


def _crows_pairs(paths):
  with open(paths[0], newline="") as f:
    return [{k: row[k] for k in ("sent_more", "sent_less", "stereo_antistereo", "bias_type")}
            for row in csv.DictReader(f)]


def _winogender(paths):
  """oskarvanderwal/winogender: the sentence id's parts, and the sentence's pronoun."""
  docs = []
  for sentid, sentence in _tsv(paths[0]):
    occupation, participant, label, gender, _ = sentid.split(".")
    pronoun, = {"he", "she", "they", "his", "her", "him", "their", "them"} & set(
        re.findall(r"\w+", sentence.lower()))
    docs.append({"sentid": sentid, "sentence": sentence, "pronoun": pronoun,
                 "occupation": occupation, "participant": participant, "gender": gender,
                 "target": (occupation, participant)[int(label)], "label": int(label)})
  return docs


def truthfulqa_docs(paths):
  return [{"question": r["question"], **{
      targets: {"choices": list(r[targets]), "labels": list(r[targets].values())}
      for targets in ("mc1_targets", "mc2_targets")}} for r in json.loads(paths[0].read_text())]


def _mmlu(paths):
  return [doc for path in paths for doc in _mmlu_subject(path)]


def _splits(name, eval_split, fewshot_split=None):
  task = TASKS[name]
  return {eval_split: task.files, **({fewshot_split: task.fewshot_files} if fewshot_split else {})}


# Harness task -> (its YAML under lm_eval/tasks, {its split: our released files}, the conversion
# of those files to its documents).
HARNESS = {
    "boolq": ("super_glue/boolq/default.yaml", _splits("boolq", "validation", "train"), _boolq),
    "piqa": ("piqa/piqa.yaml", _splits("piqa", "validation", "train"), _piqa),
    "siqa": ("siqa/siqa.yaml", _splits("siqa", "validation", "train"), _siqa),
    "hellaswag": ("hellaswag/hellaswag.yaml", _splits("hellaswag", "validation", "train"),
                  _hellaswag),
    "winogrande": ("winogrande/default.yaml", _splits("winogrande", "validation", "train"),
                   _winogrande),
    "arc_easy": ("arc/arc_easy.yaml", _splits("arc_easy", "test", "train"), _arc),
    "arc_challenge": ("arc/arc_challenge.yaml", _splits("arc_challenge", "test", "train"), _arc),
    "openbookqa": ("openbookqa/openbookqa.yaml", _splits("openbookqa", "test", "train"),
                   _openbookqa),
    # The harness's race is RACE-high; its documents are built alike for either level.
    "race_middle": ("race/race.yaml", _splits("race_middle", "test"), _race),
    "race_high": ("race/race.yaml", _splits("race_high", "test"), _race),
    **{f"mmlu_{s}": (f"mmlu/default/mmlu_{s}.yaml", {"test": (f"mmlu/data/test/{s}_test.csv",),
                                                     "dev": (f"mmlu/data/dev/{s}_dev.csv",)},
                     _mmlu) for s in MMLU_SAMPLE},
    "crows_pairs": ("crows_pairs/crows_pairs_english.yaml", _splits("crows_pairs", "test"),
                    _crows_pairs),
    "winogender": ("winogender/winogender.yaml", _splits("winogender", "test"), _winogender),
    "truthfulqa_mc1": ("truthfulqa/truthfulqa_mc1.yaml", _splits("truthfulqa_mc1", "validation"),
                       truthfulqa_docs),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", _splits("truthfulqa_mc2", "validation"),
                       truthfulqa_docs),
    # A harness task with one split draws shots from it and keeps the item out of them: PIQA
    # with its training split pointed at its validation split.
    "piqa_own_shots": ("piqa/piqa.yaml", {"validation": TASKS["piqa"].files,
                                          "train": TASKS["piqa"].files}, _piqa),
}
def harness_config(directory: Path, name: str, data_dir: Path = EVAL_DATA, *,
                   resolve_func: bool = True) -> dict:
  """The config of the harness's task HARNESS[name], its splits converted from the files under
  data_dir into JSON files in `directory` (`resolve_func=False`: as a YAML file would hold it)."""
  from lm_eval.tasks import __file__ as tasks_init
  from lm_eval.tasks._yaml_loader import load_yaml

  yaml, splits, convert = HARNESS[name]
  data_files = {}
  for split, files in splits.items():
    data_files[split] = str(directory / f"{name}-{split}.jsonl")
    docs = convert([data_dir / f for f in files])
    Path(data_files[split]).write_text("".join(json.dumps(doc) + "\n" for doc in docs))
  config = load_yaml(Path(tasks_init).parent / yaml, resolve_func=resolve_func)
  config.update(dataset_path="json", dataset_name=None, dataset_kwargs={
      "data_files": data_files, "cache_dir": str(directory / "cache")})
  return config


def harness_task(directory: Path, name: str, data_dir: Path = EVAL_DATA):
  """The harness's own task HARNESS[name] reading our sample items."""
  from lm_eval.api.task import ConfigurableTask

  return ConfigurableTask(config=harness_config(directory, name, data_dir))


def harness_requests(tasks, num_fewshot):
  """The harness's (context, continuation) pairs in order, as simple_evaluate builds them."""
  requests = []
  for task in tasks:
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)
    task.build_all_requests(rank=0, world_size=1)
    requests += [instance.args for instance in task.instances]
  return requests
