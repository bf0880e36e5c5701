"""CCNet's text normalisations (facebookresearch/cc_net, text_normalizer.py and dedup.py).

Two keys are derived from a line: the deduplication key (lowercase, digits -> 0, Unicode
punctuation and non-printing characters removed; accents kept) and the language-model input
(lowercase, accents stripped, digits -> 0, Unicode punctuation replaced by its ASCII look-alike,
non-printing characters removed).
"""

import hashlib
import re
import unicodedata

# CCNet's table of non-ASCII punctuation and the ASCII text it stands for. (The fullwidth digit
# one is in CCNet's table too; digits are zeroed before the table applies, so it never fires.)
UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
    "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}
_PUNCT_TRANSLATION = str.maketrans(UNICODE_PUNCT)
_NON_PRINTING = "".join(map(chr, [*range(0, 32), *range(127, 160)]))
_NON_PRINTING_RE = re.compile(f"[{re.escape(_NON_PRINTING)}]")
_PUNCT_OR_NON_PRINTING_RE = re.compile(f"[{re.escape(''.join(UNICODE_PUNCT) + _NON_PRINTING)}]")
_DIGIT_RE = re.compile(r"\d")


def strip_accents(text: str) -> str:
  return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def normalize_for_dedup(line: str) -> str:
  line = line.strip().lower()
  return _PUNCT_OR_NON_PRINTING_RE.sub("", _DIGIT_RE.sub("0", line))


def normalize_for_lm(line: str) -> str:
  line = strip_accents(line.strip().lower())
  line = _DIGIT_RE.sub("0", line).translate(_PUNCT_TRANSLATION)
  return _NON_PRINTING_RE.sub("", line)


def line_hash(line: str) -> int:
  """The first 8 bytes of SHA-1 of the dedup key, as CCNet keeps them (little-endian uint64)."""
  digest = hashlib.sha1(normalize_for_dedup(line).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little")
