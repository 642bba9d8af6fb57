"""Experiments that answer a question with a table (python -m minimtl experiment NAME)."""
