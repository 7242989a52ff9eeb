"""Evaluation: batched decoding (`decode`), answer parsing (`parse`), metrics, baselines and the report."""
