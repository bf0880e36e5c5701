"""Trains the reference classifier: python -m preprocessing.ccnet.train_reference_classifier
    --positives=FILES --negatives=FILES --output=MODEL

Fits the fastText model of preprocessing.ccnet.reference_classifier on JSONL document files:
positives are pages cited by Wikipedia, negatives random CommonCrawl pages.
A held-out fraction reports precision and recall of the reference class.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from preprocessing.ccnet.reference_classifier import RANDOM_LABEL, REFERENCE_LABEL, classifier_text
from preprocessing.document import Document


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

  if not 0 <= valid_fraction < 1:
    raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
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


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m preprocessing.ccnet.train_reference_classifier")
  parser.add_argument("--positives", required=True, help="JSONL files of pages cited by Wikipedia")
  parser.add_argument("--negatives", required=True, help="JSONL files of random CommonCrawl pages")
  parser.add_argument("--output", required=True, help="where to write the fastText model (.bin)")
  parser.add_argument("--valid_fraction", type=float, default=0.1, help="share held out")
  parser.add_argument("--epoch", type=int, default=5)
  parser.add_argument("--lr", type=float, default=0.1)
  parser.add_argument("--wordNgrams", type=int, default=2)
  parser.add_argument("--dim", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    report = train(args.positives.split(","), args.negatives.split(","), args.output,
                   args.valid_fraction, args.seed, epoch=args.epoch, lr=args.lr,
                   wordNgrams=args.wordNgrams, dim=args.dim)
  except (ValueError, FileNotFoundError) as error:
    parser.error(str(error))
  for key, value in report.items():
    print(f"{key}: {value}")
  print(f"model written to {args.output}")


if __name__ == "__main__":
  main()
