"""Hugging Face references for the evaluation tests: a small random LLaMA saved with Meta's
tokenizer, and a transformers tokenizer that tokenizes exactly as SentencePiece does.

transformers 5 builds LLaMA's tokenizer from tokenizer.model through protobuf >= 7, which
apache-beam (< 7) rules out here, and its BPE re-implementation splits runs of spaces
differently from SentencePiece; evaluation (ours, and Meta's) tokenizes with SentencePiece, so the
reference does too, through transformers' own SentencePiece backend.
"""

import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

# In a checkout of the repository: tests/data holds Meta's tokenizer.model.
META_TOKENIZER = (Path(__file__).resolve().parents[2] / "tests" / "data" / "llama-tokenizer"
                  / "tokenizer.model")


class SentencePieceLlamaTokenizer(SentencePieceBackend):
  """LLaMA's tokenizer in transformers, encoding with the SentencePiece library itself."""

  model_input_names = ["input_ids", "attention_mask"]

  def __init__(self, vocab_file, **kwargs):
    super().__init__(vocab_file=str(vocab_file), bos_token="<s>", eos_token="</s>",
                     unk_token="<unk>", legacy=True, **kwargs)

  def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
    return [self.bos_token_id] + token_ids_0 + (token_ids_1 or [])


def save_random_llama(directory: Path, *, context_length: int = 256, seed: int = 0) -> Path:
  """A 2-layer random LLaMA over Meta's 32000-token vocabulary, as a Hugging Face directory
  (config.json, model.safetensors) with tokenizer.model beside it."""
  torch.manual_seed(seed)
  config = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=176,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=context_length, tie_word_embeddings=False,
                       initializer_range=0.1)  # logits of order 1, so choices differ
  model = LlamaForCausalLM(config).eval()
  directory.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(directory)
  shutil.copy(META_TOKENIZER, directory / "tokenizer.model")
  return directory
