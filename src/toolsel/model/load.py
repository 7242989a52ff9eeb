"""Validate and load a DiffusionGemma directory (tiny or real, float or 4/8-bit) through mlx-vlm's loader.

Only safetensors are read and no code from the directory ever runs: `*.bin`, `*.pt`, `*.pth` and `*.py` files are
ignored, a config naming a `model_file` (mlx-vlm would import it) is refused, and loading is offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from toolsel.model.patches import make_trainable

__all__ = ["ModelDirError", "validate_model_dir", "load_model", "make_trainable", "weight_files"]

IGNORED_SUFFIXES = (".bin", ".pt", ".pth", ".py", ".pkl", ".ckpt")


class ModelDirError(ValueError):
    """The directory is not a loadable DiffusionGemma model; the message names the file and field."""


def weight_files(path: Path) -> list[Path]:
    """The safetensors files the model is made of: the index's shards if there is an index, else every *.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ModelDirError(f"{index}: not a safetensors index with a 'weight_map' ({err})") from None
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            raise ModelDirError(f"{index}: names shards that are missing: {', '.join(missing)}")
        return [path / name for name in shards]
    return sorted(p for p in path.glob("*.safetensors") if p.is_file())


def validate_model_dir(path: str | os.PathLike) -> dict:
    """Check that `path` is a DiffusionGemma model directory; returns its parsed config.json.

    Raises ModelDirError naming the missing file or wrong field.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a directory (model.path must name a local DiffusionGemma model directory)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"{config_file}: missing (not a Hugging Face / mlx-community model directory)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{config_file}: invalid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{config_file}: expected a JSON object")
    if config.get("model_type") != "diffusion_gemma":
        raise ModelDirError(
            f"{config_file}: field 'model_type' is {config.get('model_type')!r}, expected 'diffusion_gemma' "
            "(a DiffusionGemma block-diffusion model such as mlx-community/diffusiongemma-26B-A4B-it-4bit)"
        )
    if not isinstance(config.get("text_config"), dict):
        raise ModelDirError(f"{config_file}: field 'text_config' is missing or not an object")
    if "model_file" in config:
        raise ModelDirError(f"{config_file}: field 'model_file' asks to run code from the model directory; refused")
    if not weight_files(path):
        ignored = sorted(p.name for p in path.iterdir() if p.suffix in IGNORED_SUFFIXES)
        hint = f" ({', '.join(ignored)} ignored: only safetensors are loaded)" if ignored else ""
        raise ModelDirError(f"{path}: no *.safetensors weight files{hint}")
    if not (path / "tokenizer.json").is_file():
        raise ModelDirError(f"{path / 'tokenizer.json'}: missing (the tokenizer must ship with the model)")
    return config


def load_model(path: str | os.PathLike, adapter_path: str | os.PathLike | None = None):
    """(model, tokenizer) from a validated directory via `mlx_vlm.load`, offline, patched for training.

    Quantized mlx-community directories (a `quantization` entry in config.json) load quantized. `adapter_path` is an
    mlx-vlm adapter directory (`adapters.safetensors` + `adapter_config.json`). The returned model has
    `make_trainable` applied (numerically neutral), so it serves evaluation and training alike. The tokenizer is the
    directory's own (a `transformers` tokenizer; `.detokenizer` attached for mlx-vlm's generate).
    """
    validate_model_dir(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local path never needs the Hub; fail rather than download
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import mlx_vlm

    model, processor = mlx_vlm.load(
        str(path), adapter_path=None if adapter_path is None else str(adapter_path), trust_remote_code=False
    )
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer is not processor and hasattr(processor, "detokenizer"):
        tokenizer.detokenizer = processor.detokenizer  # lets mlx-vlm's generate take the tokenizer alone
    return make_trainable(model), tokenizer
