"""Data stages' core: trace formats, redaction, dedup, split, render."""
