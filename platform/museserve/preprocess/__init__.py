"""Turning chat requests into token ids: the tokenizer, its control tokens and the chat template."""
