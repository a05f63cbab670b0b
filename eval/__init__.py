"""Evaluation: the retrieval benchmark (`retrieval bench`): protocols, baselines, figures, reports and pooling of runs."""
