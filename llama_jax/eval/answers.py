"""Answers read from completions, normalized and compared, as the papers score them: exact match
(SQuAD's normalization for QA; the final number for GSM8k; Hendrycks et al.'s normalization of
MATH's \\boxed{} answers), maj1@k (a majority vote of samples) and pass@k (Chen et al. 2021).
Pure Python: no model, no files."""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation


def normalize_qa_answer(text: str) -> str:
  """SQuAD's answer normalization (Rajpurkar et al. 2016, its evaluation script), used for
  NaturalQuestions and TriviaQA exact match: lower case, no punctuation, no articles (a, an,
  the), single spaces."""
  text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def qa_exact_match(prediction: str, answers: Sequence[str]) -> float:
  """1 if the prediction equals any accepted answer once both are normalized; 0 if nothing of
  it is left to compare."""
  predicted = normalize_qa_answer(prediction)
  return float(bool(predicted) and any(predicted == normalize_qa_answer(a) for a in answers))


_NUMBER = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"


def _canonical_number(text: str) -> str | None:
  """A number as one string per value ("1,000.50" and "1000.5" alike), or None."""
  try:
    value = Decimal(text.replace(",", "").replace("$", ""))
  except InvalidOperation:
    return None
  if not value.is_finite():
    return None
  return format(value.normalize() if value else Decimal(0), "f")  # -0 and 0.00 are 0


def gsm8k_gold_answer(answer: str) -> str | None:
  """The canonical number a GSM8k worked answer ends with ("#### <number>"), or None."""
  if "####" not in answer:
    return None
  match = re.search(_NUMBER, answer.split("####")[-1])
  return _canonical_number(match.group()) if match else None


def extract_gsm8k_answer(completion: str) -> str | None:
  """The number a GSM8k completion answers with, canonical (no commas or "$"; "18.00" is "18"):
  the one after the first "The answer is" (the shots' wording) or "####" (the dataset's), else
  the last number in the text; None when there is no number."""
  stated = re.search(rf"(?:the answer is|####)\s*:?\s*\$?\s*({_NUMBER})", completion,
                     re.IGNORECASE)
  if stated:
    return _canonical_number(stated.group(1))
  numbers = re.findall(_NUMBER, completion)
  return _canonical_number(numbers[-1]) if numbers else None


def last_boxed(text: str) -> str | None:
  """The contents of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched; "\\boxed 5"
  (no braces) gives the text up to the next "$" or the end. None when there is none, or its
  braces do not close."""
  starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\b", text)]
  if not starts:
    return None
  position = starts[-1].end()
  if text[position:position + 1] == " " and text[position:].lstrip()[:1] != "{":
    return text[position + 1:].split("$")[0].strip() or None
  position += len(text[position:]) - len(text[position:].lstrip())
  if text[position:position + 1] != "{":
    return None
  depth = 0
  for index in range(position, len(text)):
    depth += {"{": 1, "}": -1}.get(text[index], 0)
    if depth == 0:
      return text[position + 1:index]
  return None


def _latex_argument(text: str, position: int) -> tuple[str, int] | None:
  """The LaTeX argument at `position` (a {group}, a \\command or one character) and where it
  ends; None at the end of the text, or at a brace that does not close."""
  if position >= len(text):
    return None
  if command := re.match(r"\\[a-zA-Z]+", text[position:]):
    return command.group(), position + command.end()
  if text[position] != "{":
    return text[position], position + 1
  depth = 0
  for index in range(position, len(text)):
    depth += {"{": 1, "}": -1}.get(text[index], 0)
    if depth == 0:
      return text[position + 1:index], index + 1
  return None


def _brace_arguments(text: str, command: str, count: int) -> str:
  """`command`'s first `count` arguments in braces: \\frac12 -> \\frac{1}{2}, \\frac\\pi2 ->
  \\frac{\\pi}{2}, \\sqrt3 -> \\sqrt{3}, \\sqrt[3]x -> \\sqrt[3]{x}; nested ones too."""
  out, copied = [], 0
  while (found := text.find(command, copied)) >= 0:
    position = found + len(command)
    if text.startswith("[", position) and "]" in text[position:]:
      position = text.index("]", position) + 1  # a root's index
    out.append(text[copied:position])
    for _ in range(count):
      argument = _latex_argument(text, position)
      if argument is None:
        break
      out.append("{" + _brace_arguments(argument[0], command, count) + "}")
      position = argument[1]
    copied = position
  out.append(text[copied:])
  return "".join(out)


def normalize_math_answer(answer: str) -> str:
  """A MATH answer in one canonical form, as Hendrycks et al. 2021's is_equiv compares them (its
  strip_string, rewritten here): no spaces, \\left/\\right, \\!, degrees, "\\$" or "%"; units in a
  trailing \\text{ ...} dropped; dfrac/tfrac as frac, \\frac12 as \\frac{1}{2}, \\sqrt3 as
  \\sqrt{3}; a leading 0 on ".5"; 0.5 as \\frac{1}{2}; a/b of integers as \\frac{a}{b}; "x = 5"
  as 5. Ours besides: a trailing "." and surrounding "$" go too, and a \\text{unit} after the
  value even without its space."""
  s = answer.replace("\\$", "").strip().strip("$")
  s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = s.replace("\\left", "").replace("\\right", "")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "")
  s = s.replace("\\%", "").replace("%", "")
  if "\\text{ " in s:
    s = s.split("\\text{ ")[0]  # "5 \text{ cm}": a unit after a space, as Hendrycks et al.
  s = re.sub(r"(?<=\S)\s*\\(?:text|mbox)\{\s*[a-zA-Z ]*\}$", "", s)
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if s.startswith("."):
    s = "0" + s
  if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
    s = s.split("=")[1]  # "x = 5", "k=5": a short name and its value
  s = s.replace(" ", "")  # before, unlike Hendrycks et al.: "\sqrt 3" is \sqrt{3}, not \sqrt{}3
  s = _brace_arguments(s, "\\sqrt", 1)
  s = _brace_arguments(s, "\\frac", 2)
  s = s.rstrip(".")
  if s == "0.5":
    s = "\\frac{1}{2}"
  if re.fullmatch(r"-?\d+/\d+", s):
    numerator, denominator = s.split("/")
    s = f"\\frac{{{numerator}}}{{{denominator}}}"
  return s


def extract_math_answer(completion: str) -> str | None:
  """The normalized answer of a MATH completion: what follows "Final Answer: The final answer is"
  (the Minerva shots' last line) on its line, up to "I hope it is correct", else the last
  \\boxed{}; None when there is neither, or it is empty."""
  marker = "Final Answer: The final answer is"
  if marker in completion:
    line = completion.split(marker, 1)[1].split("\n", 1)[0]
    answer = line.split("I hope", 1)[0].strip().rstrip(".").strip()
  else:
    answer = last_boxed(completion)
  if answer is not None and last_boxed(answer) is not None:
    answer = last_boxed(answer)  # "The final answer is $\\boxed{5}$"
  if answer is None:
    return None
  return normalize_math_answer(answer) or None


def majority_vote(answers: Sequence[str | None]) -> str | None:
  """The most frequent answer (Wang et al. 2022's self-consistency, Minerva's maj1@k). Samples
  without an answer do not vote; a tie goes to the answer that came first; None if none voted."""
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return None
  top = max(counts.values())
  return next(a for a in answers if a is not None and counts[a] == top)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Chen et al. 2021's unbiased pass@k from n samples of which c passed:
  1 - C(n-c, k) / C(n, k), as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which stays exact
  where the binomials overflow."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
