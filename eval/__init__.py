"""Evaluation: the retrieval benchmark's baselines, metrics and protocol."""
