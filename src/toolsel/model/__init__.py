"""Model directories: tokenizer and chat template, loading, the embedded tiny DiffusionGemma."""
