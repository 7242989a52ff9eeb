"""A small identity record for a model directory, so a 16.5 GB base never enters DVC's cache or gets copied.

Weight hashes are computed once and cached per file (keyed by absolute path, reused while size and mtime are
unchanged) under the user's cache directory, so `dvc repro` with nothing changed stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from toolsel.io import read_json, sha256_file, sha256_json, write_json
from toolsel.model.load import validate_model_dir, weight_files

IDENTITY = "identity.json"  # the base stage's record of a real model directory (models/base/identity.json)

# Small files that change what the model does (tokenizer, template, sampler), hashed on every call.
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
)


def cache_file() -> Path:
    """`$TOOLSEL_CACHE_DIR`, else `$XDG_CACHE_HOME/toolsel`, else `~/.cache/toolsel`; the hash cache inside it."""
    root = os.environ.get("TOOLSEL_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toolsel"
    return Path(root) / "weight-hashes.json"


def _load_cache(path: Path) -> dict:
    try:
        cache = read_json(path)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cached_sha256(file: Path, cache: dict) -> tuple[str, bool]:
    """(sha256, reused): reuse the cached digest while the file's size and mtime are unchanged."""
    stat = file.stat()
    key = str(file.resolve())
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"], True
    digest = sha256_file(file)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    return digest, False


def model_identity(path: str | os.PathLike) -> dict:
    """Identity record of a model directory: path as given, config hash, per-file sha256 and size, quantization.

    No absolute path or timestamp goes into the record (it is a DVC output); the same directory gives the same record.
    """
    directory = Path(path)
    config = validate_model_dir(directory)
    store = cache_file()
    cache = _load_cache(store)
    files, reused = {}, 0
    for file in weight_files(directory):
        digest, hit = cached_sha256(file, cache)
        reused += hit
        files[file.name] = {"sha256": digest, "size": file.stat().st_size}
    if reused < len(files):
        write_json(store, cache)
    for name in METADATA_FILES:
        if (directory / name).is_file():
            files[name] = {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size}
    quantization = config.get("quantization") or {}
    return {
        "path": str(path),
        "model_type": config["model_type"],
        "config_sha256": files["config.json"]["sha256"],
        "text_config_sha256": sha256_json(config["text_config"]),
        "canvas_length": config.get("canvas_length", 256),
        "quantization": {"bits": quantization.get("bits"), "group_size": quantization.get("group_size")}
        if quantization
        else None,
        "files": dict(sorted(files.items())),
    }


def resolve_model_dir(base_dir: str | os.PathLike) -> Path:
    """The model directory behind a base stage output (itself for tiny, the recorded path for a real model)."""
    base_dir = Path(base_dir)
    if (base_dir / "config.json").exists():
        return base_dir
    record = base_dir / IDENTITY
    if not record.exists():
        raise FileNotFoundError(f"{base_dir}: neither a model directory nor a base record ({IDENTITY}); "
                                "run `toolsel base` first")
    path = Path(read_json(record)["path"]).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{record}: field 'path': {path} is not a model directory (moved or deleted?)")
    return path
