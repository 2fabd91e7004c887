"""Heads: what the pipeline does with the records of one input topic (base.py says how)."""
