"""toolsel: a DVC pipeline that fine-tunes DiffusionGemma on MLX for tool selection."""

__version__ = "0.1.0"
