"""Trains the reference classifier: python -m preprocessing.ccnet.train_reference_classifier
    --positives=FILES --negatives=FILES --output=MODEL

Fits the fastText model of preprocessing.ccnet.reference_classifier on JSONL document files:
positives are pages cited by Wikipedia, negatives random CommonCrawl pages.
A held-out fraction reports precision and recall of the reference class.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from absl import app, flags

from preprocessing.ccnet.reference_classifier import RANDOM_LABEL, REFERENCE_LABEL, classifier_text
from preprocessing.document import Document

_POSITIVES = flags.DEFINE_list("positives", None, "JSONL files of pages cited by Wikipedia.")
_NEGATIVES = flags.DEFINE_list("negatives", None, "JSONL files of random CommonCrawl pages.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the fastText model (.bin).")
_VALID_FRACTION = flags.DEFINE_float("valid_fraction", 0.1, "Share held out for evaluation.")
_EPOCH = flags.DEFINE_integer("epoch", 5, "fastText epochs.")
_LR = flags.DEFINE_float("lr", 0.1, "fastText learning rate.")
_WORD_NGRAMS = flags.DEFINE_integer("wordNgrams", 2, "fastText word n-gram length.")
_DIM = flags.DEFINE_integer("dim", 100, "fastText embedding size.")
_SEED = flags.DEFINE_integer("seed", 0, "Shuffling seed.")
flags.mark_flags_as_required(["positives", "negatives", "output"])


def read_texts(paths: list[str]) -> list[str]:
  texts = []
  for path in paths:
    if not Path(path).is_file():
      raise FileNotFoundError(f"input file {path} not found")
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if line.strip():
          texts.append(classifier_text(Document.from_json(line, f"{path}:{number}").text))
  return texts


def precision_recall(model, examples: list[tuple[str, str]]) -> tuple[float, float]:
  predicted = [model.predict(text)[0][0] for _, text in examples]
  actual = [label for label, _ in examples]
  true_positive = sum(p == a == REFERENCE_LABEL for p, a in zip(predicted, actual, strict=True))
  precision = true_positive / max(1, predicted.count(REFERENCE_LABEL))
  recall = true_positive / max(1, actual.count(REFERENCE_LABEL))
  return precision, recall


def train(positives: list[str], negatives: list[str], output: str, valid_fraction: float = 0.1,
          seed: int = 0, **fasttext_args) -> dict:
  import fasttext

  examples = ([(REFERENCE_LABEL, t) for t in read_texts(positives)]
              + [(RANDOM_LABEL, t) for t in read_texts(negatives)])
  for label, files in ((REFERENCE_LABEL, positives), (RANDOM_LABEL, negatives)):
    if not any(example[0] == label for example in examples):
      raise ValueError(f"no documents in {files} for {label}")
  random.Random(seed).shuffle(examples)
  held_out = examples[:int(len(examples) * valid_fraction)]
  training = examples[len(held_out):]
  with tempfile.TemporaryDirectory() as tmp:
    train_file = Path(tmp) / "train.txt"
    train_file.write_text("".join(f"{label} {text}\n" for label, text in training),
                          encoding="utf-8")
    model = fasttext.train_supervised(str(train_file), seed=seed, verbose=0, thread=1,
                                      **fasttext_args)
  model.save_model(output)
  report = {"train_examples": len(training), "held_out_examples": len(held_out),
            "train_precision_recall": precision_recall(model, training)}
  if held_out:
    report["held_out_precision_recall"] = precision_recall(model, held_out)
  return report


def main(argv):
  del argv
  report = train(_POSITIVES.value, _NEGATIVES.value, _OUTPUT.value, _VALID_FRACTION.value,
                 _SEED.value, epoch=_EPOCH.value, lr=_LR.value, wordNgrams=_WORD_NGRAMS.value,
                 dim=_DIM.value)
  for key, value in report.items():
    print(f"{key}: {value}")
  print(f"model written to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
