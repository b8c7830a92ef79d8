"""A byte-level GPT with token-exact gradient accumulation: `python -m examples.gpt_lm.train`."""
