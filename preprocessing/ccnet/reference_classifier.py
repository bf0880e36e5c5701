"""The LLaMA paper's extra CommonCrawl filter: keep pages that look like Wikipedia references.

A fastText linear classifier is trained on pages cited by Wikipedia (`__label__wiki`) against
random CommonCrawl pages (`__label__cc`) (preprocessing.ccnet.train_reference_classifier); pages
it scores below the threshold as references are dropped. Text is lower-cased with newlines
replaced by spaces, for training and prediction alike.
"""

from __future__ import annotations

from preprocessing.ccnet.language_id import FastTextModel
from preprocessing.document import Document, Drop

REFERENCE_LABEL = "__label__wiki"
RANDOM_LABEL = "__label__cc"


def classifier_text(text: str) -> str:
  return text.lower().replace("\n", " ")


class ReferenceFilter:
  def __init__(self, model_path: str, threshold: float = 0.5):
    self.model = FastTextModel(model_path, "reference classifier",
                               "train one with python -m "
                               "preprocessing.ccnet.train_reference_classifier")
    self.threshold = threshold

  def __call__(self, doc: Document) -> Document | Drop:
    labels, scores = self.model.predict(classifier_text(doc.text), k=2)
    score = dict(zip(labels, scores, strict=True)).get(REFERENCE_LABEL, 0.0)
    doc.metadata["reference_score"] = round(score, 4)
    return doc if score >= self.threshold else Drop("not_reference")
