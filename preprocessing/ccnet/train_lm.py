"""Estimates the n-gram model CCNet scores with: python -m preprocessing.ccnet.train_lm
    --input=FILES --output=MODEL.arpa [--order=5] [--spm_model=PATH] [--discount_fallback]

Interpolated modified Kneser-Ney (Chen & Goodman 1998), the estimator of KenLM's lmplz, written
as an ARPA file that `kenlm.Model` loads. No KenLM trainer is on the package registries, hence
this one. Each input line is a sentence; with --spm_model it is first normalised as CCNet does
(normalize_for_lm) and cut into SentencePiece pieces, otherwise it is split on whitespace. Blank
lines are skipped; <s> and </s> are refused in the text, as lmplz does, since they would be read
as sentence boundaries. Order 1 is refused: kenlm does not load unigram models.

Discounts: where an order's counts-of-counts cannot give them (a t_k is zero, or a discount falls
outside (0, k], as on tiny or artificial text) estimation stops with an error naming the order and
its t1..t4; --discount_fallback then uses lmplz's fixed 0.5, 1, 1.5 for that order instead.

Counts are held in memory (Python dicts): fine for a per-language Wikipedia sample of some
million sentences, not for web-scale text.

The method, per order n:
- adjusted counts a(g): raw counts for the highest order and for n-grams starting with <s>;
  otherwise the number of distinct words seen to the left of g (continuation counts);
- discounts D1, D2, D3+ from the counts-of-counts t1..t4 of a: Y = t1 / (t1 + 2 t2),
  Dk = k - (k + 1) Y t(k+1) / tk;
- p(w | h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w | h without its first word), with
  gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / sum_x a(hx), the mass the discounts freed;
  unigrams interpolate with the uniform distribution over the vocabulary (<unk> included).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# KenLM's --discount_fallback values, for orders whose counts-of-counts cannot give discounts.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)

Ngram = tuple[str, ...]


def discounts(adjusted: dict[Ngram, int], order: int, fallback: bool) -> tuple[float, ...]:
  """(D1, D2, D3+) from the counts-of-counts of one order's adjusted counts."""
  t = Counter(min(c, 5) for c in adjusted.values())
  try:
    y = t[1] / (t[1] + 2 * t[2])
    result = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
    if all(0 < d <= k for k, d in zip((1, 2, 3), result, strict=True)):
      return result
  except ZeroDivisionError:
    pass
  if fallback:
    return FALLBACK_DISCOUNTS
  raise ValueError(
      f"cannot estimate discounts for order {order}: counts-of-counts t1..t4 = "
      f"{[t[k] for k in (1, 2, 3, 4)]} (too little text for this order); train on more text, "
      "lower --order, or pass --discount_fallback for KenLM's fixed discounts 0.5, 1, 1.5")


def estimate(sentences: Iterable[list[str]], order: int = 5,
             discount_fallback: bool = False) -> list[dict[Ngram, tuple[float, float | None]]]:
  """Per order (index 0 = unigrams): n-gram -> (log10 probability, log10 backoff or None)."""
  if order < 2:
    raise ValueError(f"--order={order}: KenLM loads models of order 2 and up")
  raw: list[Counter] = [Counter() for _ in range(order)]
  for tokens in sentences:
    if BOS in tokens or EOS in tokens:
      raise ValueError(f"the text holds {BOS} or {EOS}, which the model reserves for sentence "
                       f"boundaries; remove them from the input: {' '.join(tokens)[:200]!r}")
    padded = [BOS, *tokens, EOS]
    for n in range(1, order + 1):
      for i in range(len(padded) - n + 1):
        raw[n - 1][tuple(padded[i:i + n])] += 1
  if not raw[0]:
    raise ValueError("no sentences to estimate from")

  adjusted = [dict(raw[-1])]
  for n in range(order - 1, 0, -1):
    left_words = Counter(gram[1:] for gram in raw[n])
    adjusted.insert(0, {g: c if g[0] == BOS else left_words[g] for g, c in raw[n - 1].items()})
  adjusted[0].pop((BOS,))  # <s> is a context, never predicted
  adjusted[0].setdefault((UNK,), 0)

  model: list[dict[Ngram, tuple[float, float | None]]] = []
  lower_probs: dict[Ngram, float] = {}
  for n in range(1, order + 1):
    counts = adjusted[n - 1]
    d = discounts({g: c for g, c in counts.items() if c > 0}, n, discount_fallback)
    totals, freed = defaultdict(int), defaultdict(float)
    for gram, c in counts.items():
      totals[gram[:-1]] += c
      if c > 0:
        freed[gram[:-1]] += d[min(c, 3) - 1]
    gamma = {h: freed[h] / totals[h] for h in totals}
    probs = {}
    for gram, c in counts.items():
      discounted = max(c - d[min(c, 3) - 1], 0.0) / totals[gram[:-1]] if c else 0.0
      lower = 1.0 / len(counts) if n == 1 else lower_probs[gram[1:]]
      probs[gram] = discounted + gamma[gram[:-1]] * lower
    if model:  # the contexts of this order carry their backoff in the order below
      previous = model[-1]
      model[-1] = {g: (p, math.log10(gamma[g]) if g in gamma and gamma[g] > 0 else None)
                   for g, (p, _) in previous.items()}
      for h in gamma:
        if h not in previous:  # only (<s>,): a context that is never predicted
          model[-1][h] = (-99.0, math.log10(gamma[h]) if gamma[h] > 0 else None)
    model.append({g: (math.log10(p), None) for g, p in probs.items()})
    lower_probs = probs
  model[0].setdefault((BOS,), (-99.0, None))  # KenLM needs <s> in the vocabulary
  return model


def write_arpa(model: list[dict[Ngram, tuple[float, float | None]]], path: str | Path) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\\data\\\n")
    for n, grams in enumerate(model, 1):
      f.write(f"ngram {n}={len(grams)}\n")
    for n, grams in enumerate(model, 1):
      f.write(f"\n\\{n}-grams:\n")
      for gram, (log_prob, log_backoff) in grams.items():
        backoff = "" if log_backoff is None else f"\t{log_backoff:.6f}"
        f.write(f"{log_prob:.6f}\t{' '.join(gram)}{backoff}\n")
    f.write("\n\\end\\\n")


def read_sentences(paths: list[str], spm_model: str | None = None) -> Iterator[list[str]]:
  tokenize = str.split
  if spm_model:
    import sentencepiece

    from preprocessing.ccnet.normalize import normalize_for_lm

    processor = sentencepiece.SentencePieceProcessor(model_file=spm_model)

    def tokenize(line):
      return processor.encode(normalize_for_lm(line), out_type=str)

  # All paths are checked before counting, so a typo in the last one does not cost a long count.
  if missing := [path for path in paths if not Path(path).is_file()]:
    raise FileNotFoundError(f"input file(s) {', '.join(missing)} not found")
  for path in paths:
    with open(path, encoding="utf-8") as f:
      for line in tqdm(f, desc=f"counting {path}", unit=" lines", leave=False):
        if tokens := tokenize(line.strip()):
          yield tokens


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m preprocessing.ccnet.train_lm",
                                   description=__doc__.split("\n\n")[1])
  parser.add_argument("--input", required=True, help="text files, comma-separated, a sentence "
                      "per line")
  parser.add_argument("--output", required=True, help="path of the ARPA file to write")
  parser.add_argument("--order", type=int, default=5, help="n-gram order (cc_net: 5)")
  parser.add_argument("--spm_model", help="SentencePiece model to tokenize with")
  parser.add_argument("--discount_fallback", action="store_true",
                      help="use discounts 0.5, 1, 1.5 where counts cannot give them")
  args = parser.parse_args(argv)
  if args.spm_model and not Path(args.spm_model).is_file():
    parser.error(f"--spm_model={args.spm_model}: file not found")
  try:
    model = estimate(read_sentences(args.input.split(","), args.spm_model), args.order,
                     args.discount_fallback)
  except (ValueError, FileNotFoundError) as error:
    parser.error(str(error))
  write_arpa(model, args.output)
  print(f"wrote {args.output}: " + ", ".join(f"{len(g)} {n}-grams" for n, g in
                                            enumerate(model, 1)))


if __name__ == "__main__":
  main()
