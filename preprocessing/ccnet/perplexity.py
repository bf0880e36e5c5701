"""CCNet's quality signal: perplexity of a KenLM model trained on Wikipedia, and its buckets.

As cc_net's mine.py computes it: the document is normalised (normalize_for_lm), cut into
SentencePiece pieces and scored by KenLM with sentence boundaries; perplexity is
10 ** (-log10 score / (pieces + 1)). The normalisation deletes control characters, newlines among
them, so the lines of a page are scored as one sequence, glued without a space: a quirk, but the
one cc_net's cutoffs were measured with. Buckets come from per-language percentile cutoffs
(cc_net data/cutoff.csv, columns 30 and 60): for English head < 340 <= middle < 520 <= tail.
"""

from __future__ import annotations

from pathlib import Path

from preprocessing.ccnet.normalize import normalize_for_lm
from preprocessing.document import Document, Drop

# cc_net data/cutoff.csv: the 30th and 60th percentile perplexities of each language.
DEFAULT_CUTOFFS = {"en": (340.0, 520.0)}
BUCKETS = ("head", "middle", "tail")


def parse_cutoffs(spec: str) -> dict[str, tuple[float, float]]:
  """'en:340:520,de:...' -> {'en': (340.0, 520.0), ...}."""
  cutoffs = {}
  for item in filter(None, spec.split(",")):
    try:
      language, head, middle = item.split(":")
      cutoffs[language] = (float(head), float(middle))
    except ValueError:
      raise ValueError(f"bad perplexity cutoff {item!r}: expected LANG:HEAD_MAX:MIDDLE_MAX, "
                       "e.g. en:340:520") from None
  return cutoffs


class PerplexityScorer:
  """Adds `perplexity` and `bucket` to metadata; drops documents outside `keep_buckets`.

  The language comes from the language-id step (metadata['language'], 'en' when absent); a
  language without cutoffs is dropped as `perplexity_no_cutoffs_<lang>` rather than guessed.
  Models load on first use so the scorer pickles for Beam workers.
  """

  def __init__(self, lm_path: str, spm_path: str, keep_buckets=("head", "middle"),
               cutoffs: dict[str, tuple[float, float]] | None = None):
    for path, what in ((lm_path, "KenLM model"), (spm_path, "SentencePiece model")):
      if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} not found; train one with python -m "
                                "preprocessing.ccnet.train_lm (and spm_train for pieces)")
    if unknown := set(keep_buckets) - set(BUCKETS):
      raise ValueError(f"unknown perplexity buckets {sorted(unknown)}; choose from {BUCKETS}")
    self.lm_path, self.spm_path = lm_path, spm_path
    self.keep_buckets = frozenset(keep_buckets)
    self.cutoffs = DEFAULT_CUTOFFS if cutoffs is None else cutoffs
    self._lm = self._spm = None

  def __getstate__(self):
    return {**self.__dict__, "_lm": None, "_spm": None}

  def _load(self):
    import kenlm
    import sentencepiece

    self._lm = kenlm.Model(self.lm_path)
    self._spm = sentencepiece.SentencePieceProcessor(model_file=self.spm_path)

  def perplexity(self, text: str) -> float:
    if self._lm is None:
      self._load()
    pieces = self._spm.encode(normalize_for_lm(text), out_type=str)
    log10_score = self._lm.score(" ".join(pieces), bos=True, eos=True)
    return round(10.0 ** (-log10_score / (len(pieces) + 1)), 1)

  def __call__(self, doc: Document) -> Document | Drop:
    language = doc.metadata.get("language", "en")
    if language not in self.cutoffs:
      return Drop(f"perplexity_no_cutoffs_{language}")
    perplexity = self.perplexity(doc.text)
    head, middle = self.cutoffs[language]
    bucket = "head" if perplexity < head else "middle" if perplexity < middle else "tail"
    doc.metadata["perplexity"] = perplexity
    doc.metadata["bucket"] = bucket
    return doc if bucket in self.keep_buckets else Drop(f"perplexity_{bucket}")
