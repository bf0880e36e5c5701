"""CCNet's language identification with fastText, and its minimum document length.

CCNet (cc_net mine.py) runs fastText's `lid.176.bin` on the whole document with newlines replaced
by spaces, keeps the top label with its probability, and drops documents shorter than 300
characters (`min_len`). `train_language_id` trains a small identifier of the same kind from
`__label__xx text` lines, for corpora where lid.176.bin (126 MB) cannot be shipped.
"""

from __future__ import annotations

from pathlib import Path

from preprocessing.document import Document, Drop


def min_length(doc: Document, min_chars: int = 300) -> Document | Drop:
  return doc if len(doc.text) >= min_chars else Drop("too_short")


# The architecture of fastText's language identifier (fasttext.cc blog "Fast and accurate
# language identification using fastText", 2017: -loss hs -dim 16 -minn 2 -maxn 4); the rest is
# ours, for a few hundred KB of text: every word kept (minCount 1), a high rate and many epochs
# over the small data, fewer hash buckets. One thread and a fixed seed make the model the same
# on every run.
LANGUAGE_ID_SETTINGS = {"loss": "hs", "dim": 16, "minn": 2, "maxn": 4, "wordNgrams": 1,
                        "minCount": 1, "lr": 0.5, "epoch": 25, "bucket": 200_000, "thread": 1,
                        "seed": 0, "verbose": 0}


def train_language_id(train_file: str | Path, output: str | Path, **settings) -> Path:
  """Trains a fastText language identifier on `__label__xx text` lines and saves it to `output`.

  `settings` override LANGUAGE_ID_SETTINGS (any fasttext.train_supervised argument).
  """
  import fasttext  # imported here, as in FastTextModel

  train_file, output = Path(train_file), Path(output)
  if not train_file.is_file():
    raise FileNotFoundError(f"language-id training file {train_file} not found; one "
                            "`__label__xx text` line per paragraph")
  model = fasttext.train_supervised(str(train_file), **{**LANGUAGE_ID_SETTINGS, **settings})
  output.parent.mkdir(parents=True, exist_ok=True)
  model.save_model(str(output))
  return output


class FastTextModel:
  """A fastText model file loaded on first use, so that the holder pickles for Beam workers."""

  def __init__(self, path: str, what: str, fix: str):
    if not Path(path).is_file():
      raise FileNotFoundError(f"{what} model {path} not found; {fix}")
    self.path = path
    self._model = None

  def __getstate__(self):
    return {"path": self.path, "_model": None}

  def predict(self, text: str, k: int = 1) -> tuple[tuple[str, ...], list[float]]:
    if self._model is None:
      import fasttext  # imported here: workers that never predict need not load it

      self._model = fasttext.load_model(self.path)
    labels, scores = self._model.predict(text.replace("\n", " "), k=k)
    return labels, [float(s) for s in scores]


class LanguageIdentifier:
  """Keeps documents whose top fastText language is kept and scores at least `threshold`."""

  def __init__(self, model_path: str, keep_languages=("en",), threshold: float = 0.5):
    self.model = FastTextModel(model_path, "language-id",
                               "download lid.176.bin from https://fasttext.cc/docs/en/"
                               "language-identification.html and pass its path")
    self.keep_languages = frozenset(keep_languages)
    self.threshold = threshold

  def __call__(self, doc: Document) -> Document | Drop:
    labels, scores = self.model.predict(doc.text)
    language = labels[0].removeprefix("__label__")
    doc.metadata["language"] = language
    doc.metadata["language_score"] = round(scores[0], 2)
    if language not in self.keep_languages:
      return Drop(f"language_{language}")
    if scores[0] < self.threshold:
      return Drop("language_low_confidence")
    return doc
