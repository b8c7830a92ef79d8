"""Runnable examples, importable from the repository root: `python -m examples.<name>.train`."""
