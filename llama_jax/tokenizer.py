"""LLaMA's tokenizer: SentencePiece BPE, and `python -m llama_jax.tokenizer train`.

    python -m llama_jax.tokenizer train --input='out/*/documents-*.jsonl.gz' --model_prefix=llama \
        [--vocab_size=32000] [--input_sentence_size=200000000]

Training uses the settings of Meta's released `tokenizer.model` (its trainer_spec, listed in
tests/data/llama-tokenizer/README.md): BPE; every number split into single digits (paper 2.1);
byte fallback, so unknown UTF-8 becomes byte pieces and no input gives `<unk>`; the `identity`
normaliser with whitespace kept as it is; unk 0, bos 1, eos 2, no pad. Hence
decode(encode(text)) == text for every string that does not contain U+2581 ("▁"), the character
SentencePiece itself uses for a space (it decodes to " ", in Meta's model as in ours).

Input is read as a stream through SentencePiece's sentence iterator: SentencePiece keeps a
shuffled reservoir sample of `input_sentence_size` sentences (Meta's 200M), so memory holds the
sample, never the corpus. A sentence is one line: of a plain-text file, or of the `text` field of
a JSON-lines file (the documents preprocessing.run writes); `.gz` and `.zst` are decompressed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from llama_jax.jsonl import open_text, read_jsonl

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Meta's tokenizer.model trainer_spec and normalizer_spec. train_extremely_large_corpus stays off
# as in Meta's file: it widens only the unigram trainer's suffix array, BPE never reads it.
LLAMA_TRAINER_SPEC = dict(
    model_type="bpe",
    vocab_size=32000,
    character_coverage=0.99995,
    split_digits=True,
    byte_fallback=True,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    max_sentencepiece_length=16,
    max_sentence_length=4192,
    input_sentence_size=200_000_000,
    shuffle_input_sentence=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    pad_id=-1,
)


class Tokenizer:
  """A SentencePiece model with LLaMA's special ids: ours or Meta's `tokenizer.model`."""

  def __init__(self, model_file: str | os.PathLike):
    self.path = Path(model_file)
    if not self.path.is_file():
      raise FileNotFoundError(
          f"tokenizer model {self.path} does not exist: train one with "
          "`python -m llama_jax.tokenizer train` or give Meta's tokenizer.model")
    try:
      self._processor = spm.SentencePieceProcessor(model_file=str(self.path))
    except (OSError, RuntimeError) as error:
      raise ValueError(f"{self.path} is not a SentencePiece model ({error})") from None
    specials = (self._processor.unk_id(), self._processor.bos_id(), self._processor.eos_id())
    if specials != (UNK_ID, BOS_ID, EOS_ID):
      raise ValueError(f"{self.path}: unk/bos/eos ids are {specials}; LLaMA's are "
                       f"{(UNK_ID, BOS_ID, EOS_ID)}. Retrain it with llama_jax.tokenizer.")
    self.vocab_size = self._processor.vocab_size()
    self.bos_id, self.eos_id = BOS_ID, EOS_ID

  @property
  def sha256(self) -> str:
    """The model file's digest: which tokenizer made a set of token shards."""
    return hashlib.sha256(self.path.read_bytes()).hexdigest()

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    return self._processor.encode(text, add_bos=bos, add_eos=eos)

  def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False,
                   num_threads: int | None = None) -> list[list[int]]:
    """`encode` of each text, the texts spread over SentencePiece's C++ threads (by default one
    per core this process may run on): one Python call, and every core busy, for many texts."""
    # SentencePiece takes the batch path only for a list.
    return self._processor.encode(list(texts), add_bos=bos, add_eos=eos,
                                  num_threads=num_threads or len(os.sched_getaffinity(0)))

  def decode(self, ids: Sequence[int]) -> str:
    return self._processor.decode(list(ids))

  def pieces(self, text: str) -> list[str]:
    return self._processor.encode(text, out_type=str)


def expand_inputs(patterns: Sequence[str]) -> list[str]:
  """Files matching each glob, in order; a pattern matching nothing is an error."""
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise FileNotFoundError(f"no files match --input pattern {pattern!r}")
    files += matches
  return files


def iter_sentences(files: Sequence[str]) -> Iterator[str]:
  """Non-empty lines of text files, or of the `text` field of JSON-lines files."""
  for path in files:
    if ".jsonl" in Path(path).name:
      for where, record in read_jsonl(path):
        if not isinstance(record.get("text"), str):
          raise ValueError(f"{where}: not a JSON object with a `text` field (a string)")
        yield from (s for s in record["text"].split("\n") if s)
      continue
    with open_text(path) as f:
      yield from (line for line in (raw.rstrip("\n") for raw in f) if line)


def train(inputs: Sequence[str], model_prefix: str | os.PathLike, *,
          vocab_size: int = LLAMA_TRAINER_SPEC["vocab_size"],
          input_sentence_size: int = LLAMA_TRAINER_SPEC["input_sentence_size"],
          num_threads: int | None = None, **overrides) -> Path:
  """Trains LLaMA's tokenizer on files (or globs); returns the path of `<model_prefix>.model`."""
  files = expand_inputs(inputs)
  Path(model_prefix).parent.mkdir(parents=True, exist_ok=True)
  spec = {**LLAMA_TRAINER_SPEC, "vocab_size": vocab_size,
          "input_sentence_size": input_sentence_size,
          "num_threads": num_threads or os.cpu_count() or 1, **overrides}
  spm.SentencePieceTrainer.train(sentence_iterator=iter_sentences(files),
                                 model_prefix=str(model_prefix), **spec)
  return Path(f"{model_prefix}.model")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m llama_jax.tokenizer",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  train_parser = commands.add_parser("train", help="train a tokenizer with LLaMA's settings")
  train_parser.add_argument("--input", required=True,
                            help="comma-separated files or globs: text, or JSONL with `text`")
  train_parser.add_argument("--model_prefix", required=True,
                            help="writes PREFIX.model and PREFIX.vocab")
  train_parser.add_argument("--vocab_size", type=int, default=LLAMA_TRAINER_SPEC["vocab_size"])
  train_parser.add_argument("--input_sentence_size", type=int,
                            default=LLAMA_TRAINER_SPEC["input_sentence_size"],
                            help="sentences sampled for training (Meta's 200M)")
  train_parser.add_argument("--num_threads", type=int, default=None,
                            help="default: every CPU core")
  args = parser.parse_args(argv)
  try:
    model = train([p for p in args.input.split(",") if p], args.model_prefix,
                  vocab_size=args.vocab_size, input_sentence_size=args.input_sentence_size,
                  num_threads=args.num_threads)
  except (FileNotFoundError, ValueError, RuntimeError) as error:  # RuntimeError: SentencePiece's
    parser.exit(2, f"error: {error}\n")
  print(f"wrote {model} (vocab {Tokenizer(model).vocab_size})", file=sys.stderr)


if __name__ == "__main__":
  main()
