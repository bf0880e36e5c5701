"""KenLM side of CCNet: our modified Kneser-Ney estimator, loaded by kenlm, and perplexity."""

import itertools
import pickle
import random
import subprocess
import sys
from collections import Counter, defaultdict

import kenlm
import pytest
import sentencepiece

from preprocessing.ccnet.normalize import normalize_for_lm
from preprocessing.ccnet.perplexity import PerplexityScorer, parse_cutoffs
from preprocessing.ccnet.train_lm import discounts, estimate, main, write_arpa
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_web


def _kenlm(tmp_path, sentences, order, fallback=False):
  path = tmp_path / f"lm{order}.arpa"
  write_arpa(estimate([s.split() for s in sentences], order, fallback), path)
  return kenlm.Model(str(path))


def _zipf_corpus(seed, phrases, vocabulary_size):
  """Zipf-distributed words, sentences repeated 1-8 times (rarely many): counts-of-counts fall off
  as in real text, so the seeds used here give Chen-Goodman discounts at every order."""
  rng = random.Random(seed)
  words = [f"w{i}" for i in range(vocabulary_size)]
  weights = [1 / rank for rank in range(1, vocabulary_size + 1)]
  distinct = [" ".join(rng.choices(words, weights, k=rng.randint(3, 12))) for _ in range(phrases)]
  repeats = rng.choices(range(1, 9), [1 / k**2 for k in range(1, 9)], k=phrases)
  return [sentence for sentence, k in zip(distinct, repeats, strict=True) for _ in range(k)]


def _kneser_ney_bigram(sentences):
  """Interpolated modified Kneser-Ney of order 2 straight from Chen & Goodman's formulas."""
  bigrams = Counter(pair for s in sentences
                    for pair in itertools.pairwise(["<s>", *s.split(), "</s>"]))
  left_words = Counter(w for _, w in bigrams)  # the unigram level counts distinct left words
  following = defaultdict(dict)
  for (h, w), c in bigrams.items():
    following[h][w] = c

  def discount(counts):
    n = Counter(counts)
    y = n[1] / (n[1] + 2 * n[2])
    d = [0, 1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3]]
    return lambda c: d[min(c, 3)]

  d1, d2 = discount(left_words.values()), discount(bigrams.values())
  vocabulary = [*left_words, "<unk>"]
  total = sum(left_words.values())
  gamma = sum(map(d1, left_words.values())) / total
  unigram = {w: (left_words[w] - d1(left_words[w])) / total + gamma / len(vocabulary)
             for w in vocabulary}

  def distribution(h):
    counts = following.get(h, {})
    if not counts:
      return unigram
    total_h = sum(counts.values())
    gamma_h = sum(map(d2, counts.values())) / total_h
    return {w: (counts.get(w, 0) - d2(counts.get(w, 0))) / total_h + gamma_h * unigram[w]
            for w in vocabulary}

  return vocabulary, distribution


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


def test_bigram_matches_independent_kneser_ney(tmp_path):
  sentences = _zipf_corpus(seed=0, phrases=60, vocabulary_size=60)
  lm = _kenlm(tmp_path, sentences, order=2)  # no fallback: discounts estimated at both orders
  vocabulary, distribution = _kneser_ney_bigram(sentences)
  for h in ["<s>", *vocabulary]:
    state = kenlm.State()
    if h == "<s>":
      lm.BeginSentenceWrite(state)
    else:
      null = kenlm.State()
      lm.NullContextWrite(null)
      lm.BaseScore(null, h, state)
    got = {w: 10 ** lm.BaseScore(state, w, kenlm.State()) for w in vocabulary}
    assert got == pytest.approx(distribution(h), rel=1e-5), h


@pytest.mark.parametrize("order,fallback", [(2, False), (3, False), (5, False), (3, True)])
def test_every_context_is_a_distribution(tmp_path, order, fallback):
  sentences = _zipf_corpus(seed=order, phrases=300, vocabulary_size=300)
  lm = _kenlm(tmp_path, sentences, order, fallback)
  vocabulary = sorted({w for s in sentences for w in s.split()} | {"</s>", "<unk>"})
  repeated = Counter(sentences).most_common(1)[0][0].split()
  for context in ([], ["w0"], ["w1", "w0"], sentences[-1].split()[:4], repeated[:4],
                  ["unseen", "words"]):
    assert _next_word_total(lm, context, vocabulary) == pytest.approx(1.0, abs=1e-4), context


def test_order_and_empty_input_are_refused():
  with pytest.raises(ValueError, match="--order=1: KenLM loads models of order 2 and up"):
    estimate([["a"]], order=1)
  with pytest.raises(ValueError, match="no sentences"):
    estimate([], order=3)
  with pytest.raises(ValueError, match="reserves for sentence boundaries"):
    estimate([["a", "</s>", "b"]], order=3)


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
  # cc_net's normalisation deletes newlines: the page is one sequence, lines glued together.
  glued = normalize_for_lm(english)
  assert "\n" not in glued and english.split("\n")[1][:5].lower() in glued
  pieces = spm.encode(glued, out_type=str)
  expected = 10 ** (-lm.score(" ".join(pieces)) / (len(pieces) + 1))
  assert scorer.perplexity(english) == round(expected, 1)
  assert scorer.perplexity(english) * 3 < scorer.perplexity(junk)
  assert pickle.loads(pickle.dumps(scorer)).perplexity(junk) == scorer.perplexity(junk)


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
  unlabelled = Document(id="z", source="ccnet", text=page)  # taken as English
  kept = PerplexityScorer(lm_path, spm_path, cutoffs={"en": (perplexity + 1, perplexity + 2)})(
      unlabelled)
  assert kept.metadata["bucket"] == "head"


def test_scorer_and_cutoff_errors(scorer_models, tmp_path):
  lm_path, spm_path = scorer_models
  with pytest.raises(FileNotFoundError, match="KenLM model .*missing.arpa not found"):
    PerplexityScorer(str(tmp_path / "missing.arpa"), spm_path)
  with pytest.raises(ValueError, match=r"unknown perplexity buckets \['best'\]"):
    PerplexityScorer(lm_path, spm_path, keep_buckets=("best",))
  assert parse_cutoffs("en:340:520,de:1:2") == {"en": (340.0, 520.0), "de": (1.0, 2.0)}
  with pytest.raises(ValueError, match="expected LANG:HEAD_MAX:MIDDLE_MAX"):
    parse_cutoffs("en:340")


def test_train_lm_command(tmp_path, capsys):
  first, second = tmp_path / "a.txt", tmp_path / "b.txt"
  first.write_text("\n".join(_zipf_corpus(seed=1, phrases=150, vocabulary_size=100)) + "\n")
  second.write_text("only in the second file\n")
  main([f"--input={first},{second}", f"--output={tmp_path / 'lm.arpa'}", "--order=3"])
  assert "3-grams" in capsys.readouterr().out
  lm = kenlm.Model(str(tmp_path / "lm.arpa"))
  assert lm.order == 3 and "second" in lm and "w0" in lm


@pytest.mark.parametrize("args,error", [
    (["--input={tmp}/nope.txt,{tmp}/tiny.txt"], "input file(s) {tmp}/nope.txt not found"),
    (["--input={tmp}/empty.txt"], "no sentences to estimate from"),
    (["--input={tmp}/tiny.txt", "--order=1"], "--order=1: KenLM loads models of order 2 and up"),
    (["--input={tmp}/tiny.txt"], "cannot estimate discounts for order 1"),
    (["--input={tmp}/tiny.txt", "--spm_model={tmp}/sp.model"], "sp.model: file not found"),
])
def test_train_lm_command_errors(tmp_path, capsys, args, error):
  (tmp_path / "tiny.txt").write_text("a b\nb a\n")
  (tmp_path / "empty.txt").write_text("\n\n")
  with pytest.raises(SystemExit) as exit_info:
    main([*(a.format(tmp=tmp_path) for a in args), f"--output={tmp_path / 'x.arpa'}"])
  assert exit_info.value.code == 2
  assert error.format(tmp=tmp_path) in capsys.readouterr().err
  assert not (tmp_path / "x.arpa").exists()
