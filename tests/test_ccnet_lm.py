"""KenLM side of CCNet: our modified Kneser-Ney estimator, loaded by kenlm, and perplexity."""

import pickle
import random
import subprocess
import sys

import kenlm
import pytest
import sentencepiece

from benchmarks import synthetic_web
from preprocessing.ccnet.normalize import normalize_for_lm
from preprocessing.ccnet.perplexity import PerplexityScorer, parse_cutoffs
from preprocessing.ccnet.train_lm import discounts, estimate, write_arpa
from preprocessing.document import Document, Drop


def _kenlm(tmp_path, sentences, order, fallback=False):
  path = tmp_path / f"lm{order}.arpa"
  write_arpa(estimate([s.split() for s in sentences], order, fallback), path)
  return kenlm.Model(str(path))


def _next_word_total(lm, context, vocabulary):
  state = kenlm.State()
  lm.BeginSentenceWrite(state)
  for word in context:
    following = kenlm.State()
    lm.BaseScore(state, word, following)
    state = following
  return sum(10 ** lm.BaseScore(state, w, kenlm.State()) for w in vocabulary)


def test_discounts_follow_chen_and_goodman():
  # Counts-of-counts t1..t4 = 10, 5, 3, 2: Y = 0.5, D1 = 0.5, D2 = 1.1, D3+ = 5/3.
  adjusted = {(str(i),): c for i, c in enumerate([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2)}
  assert discounts(adjusted, 1, fallback=False) == pytest.approx((0.5, 1.1, 5 / 3))
  with pytest.raises(ValueError, match=r"order 1: counts-of-counts t1..t4 = \[0, 3, 0, 0\]"):
    discounts({("a",): 2, ("b",): 2, ("c",): 2}, 1, fallback=False)
  assert discounts({("a",): 2}, 1, fallback=True) == (0.5, 1.0, 1.5)


def test_bigram_probabilities_by_hand(tmp_path):
  # <s> a b </s> twice, <s> b a </s>; fallback discounts 0.5, 1, 1.5 at both orders.
  lm = _kenlm(tmp_path, ["a b", "a b", "b a"], order=2, fallback=True)
  # Unigram continuation counts a=b=</s>=2 over 6, freed mass 3 * D2 / 6 = 0.5 spread over the
  # four words a, b, </s>, <unk>: p(b) = 1/6 + 1/8. After "a": counts b=2, </s>=1, gamma = 0.5.
  p_b = 1 / 6 + 0.5 / 4
  state, after_a = kenlm.State(), kenlm.State()
  lm.NullContextWrite(state)
  lm.BaseScore(state, "a", after_a)
  assert 10 ** lm.BaseScore(after_a, "b", kenlm.State()) == pytest.approx(1 / 3 + 0.5 * p_b, 1e-5)
  assert 10 ** lm.BaseScore(after_a, "</s>", kenlm.State()) == pytest.approx(
      0.5 / 3 + 0.5 * p_b, 1e-5)
  assert 10 ** lm.BaseScore(after_a, "a", kenlm.State()) == pytest.approx(0.5 * p_b, 1e-5)
  assert 10 ** lm.BaseScore(after_a, "<unk>", kenlm.State()) == pytest.approx(0.5 / 8, 1e-5)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_every_context_is_a_distribution(tmp_path, order):
  rng = random.Random(order)
  words = synthetic_web.ENGLISH[:40]
  sentences = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(400)]
  lm = _kenlm(tmp_path, sentences, order, fallback=True)
  vocabulary = sorted(set(words) | {"</s>", "<unk>"})
  for context in ([], ["the"], ["the", "of"], sentences[0].split()[:4], ["unseen", "words"]):
    assert _next_word_total(lm, context, vocabulary) == pytest.approx(1.0, abs=1e-4)


def test_order_and_empty_input_are_refused():
  with pytest.raises(ValueError, match="--order=1: KenLM loads models of order 2 and up"):
    estimate([["a"]], order=1)
  with pytest.raises(ValueError, match="no sentences"):
    estimate([], order=3)


@pytest.fixture(scope="module")
def scorer_models(tmp_path_factory):
  """A unigram SentencePiece model (as CCNet's) and a 3-gram LM on generated English."""
  tmp = tmp_path_factory.mktemp("lm")
  rng = random.Random(0)
  text = tmp / "english.txt"
  text.write_text("\n".join(synthetic_web._paragraph(rng, synthetic_web.ENGLISH)
                            for _ in range(600)))
  normalized = tmp / "normalized.txt"
  normalized.write_text("\n".join(normalize_for_lm(line) for line in text.read_text().split("\n")))
  sentencepiece.SentencePieceTrainer.train(input=str(normalized), model_prefix=str(tmp / "sp"),
                                           vocab_size=120, model_type="unigram",
                                           minloglevel=2)
  result = subprocess.run(
      [sys.executable, "-m", "preprocessing.ccnet.train_lm", f"--input={text}",
       f"--output={tmp / 'en.arpa'}", "--order=3", f"--spm_model={tmp / 'sp.model'}",
       "--discount_fallback"],  # 120 pieces are too few for Chen-Goodman discounts
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "3-grams" in result.stdout
  return str(tmp / "en.arpa"), str(tmp / "sp.model")


def test_perplexity_is_cc_nets_formula_and_ranks_text(scorer_models):
  lm_path, spm_path = scorer_models
  scorer = pickle.loads(pickle.dumps(PerplexityScorer(lm_path, spm_path)))
  rng = random.Random(5)
  english = synthetic_web.page(rng, "english")
  junk = synthetic_web.page(rng, "junk")
  lm = kenlm.Model(lm_path)
  spm = sentencepiece.SentencePieceProcessor(model_file=spm_path)
  log10_total, tokens = 0.0, 0
  for line in english.split("\n"):
    pieces = spm.encode(normalize_for_lm(line), out_type=str)
    log10_total += lm.score(" ".join(pieces))
    tokens += len(pieces) + 1
  assert scorer.perplexity(english) == round(10 ** (-log10_total / tokens), 1)
  assert scorer.perplexity(english) * 3 < scorer.perplexity(junk)


def test_buckets_and_drops(scorer_models):
  lm_path, spm_path = scorer_models
  page = synthetic_web.page(random.Random(6), "english")
  perplexity = PerplexityScorer(lm_path, spm_path).perplexity(page)

  def score(cutoffs, **kwargs):
    doc = Document(id="x", source="ccnet", text=page, metadata={"language": "en"})
    return PerplexityScorer(lm_path, spm_path, cutoffs={"en": cutoffs}, **kwargs)(doc)

  head = score((perplexity + 1, perplexity + 2))
  assert (head.metadata["bucket"], head.metadata["perplexity"]) == ("head", perplexity)
  assert score((perplexity - 1, perplexity + 1)).metadata["bucket"] == "middle"
  assert score((perplexity - 2, perplexity - 1)) == Drop("perplexity_tail")
  assert score((perplexity - 2, perplexity - 1), keep_buckets=("tail",)).metadata["bucket"] == (
      "tail")
  german = Document(id="y", source="ccnet", text=page, metadata={"language": "de"})
  assert PerplexityScorer(lm_path, spm_path)(german) == Drop("perplexity_no_cutoffs_de")


def test_scorer_and_cutoff_errors(scorer_models, tmp_path):
  lm_path, spm_path = scorer_models
  with pytest.raises(FileNotFoundError, match="KenLM model .*missing.arpa not found"):
    PerplexityScorer(str(tmp_path / "missing.arpa"), spm_path)
  with pytest.raises(ValueError, match=r"unknown perplexity buckets \['best'\]"):
    PerplexityScorer(lm_path, spm_path, keep_buckets=("best",))
  assert parse_cutoffs("en:340:520,de:1:2") == {"en": (340.0, 520.0), "de": (1.0, 2.0)}
  with pytest.raises(ValueError, match="expected LANG:HEAD_MAX:MIDDLE_MAX"):
    parse_cutoffs("en:340")


def test_train_lm_command_reports_bad_input(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "preprocessing.ccnet.train_lm", *args],
                          capture_output=True, text=True, timeout=60)

  missing = run(f"--input={tmp_path / 'nope.txt'}", f"--output={tmp_path / 'x.arpa'}")
  assert missing.returncode != 0 and "nope.txt not found" in missing.stderr
  (tmp_path / "tiny.txt").write_text("a b\nb a\n")
  sparse = run(f"--input={tmp_path / 'tiny.txt'}", f"--output={tmp_path / 'x.arpa'}")
  assert sparse.returncode != 0 and "--discount_fallback" in sparse.stderr
