"""Turning canonical records into model inputs: chat templates, turn packing, truncation, tokenizers."""
