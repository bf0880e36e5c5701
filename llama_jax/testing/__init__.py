"""Helpers shared by tests/ and benchmarks/, never imported by the library itself:
training_runs.py (small training runs in child processes) and hf_reference.py (Hugging Face
references: a small random LLaMA, a SentencePiece-exact transformers tokenizer; needs the test
extra's torch and transformers)."""
