"""Resumable training checkpoints: trainable weights, Adam moments, step, RNG, data position, and a fingerprint.

A checkpoint is a folder `step-NNNNNN/` written under a temporary name and renamed into place, so a run killed
mid-save leaves the previous checkpoint intact. The fingerprint hashes the train params, the input data and the
base model's identity: a rerun resumes only from a checkpoint with the same fingerprint (DVC keeps the folder
across param changes, `persist: true`), otherwise it starts fresh and says why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from toolsel.io import read_json, sha256_file, sha256_json, write_json
from toolsel.schemas import SchemaError, validate
from toolsel.train.lora import load_trainable, save_safetensors, trainable_weights

WEIGHTS, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.safetensors", "state.json"
_PREFIX = "step-"


def fingerprint(train_params: dict, data_files: list[str | os.PathLike], base_identity: dict) -> str:
    """sha256 over the train params (incl. lr), the data files' bytes and the base model's identity record."""
    return sha256_json({"params": train_params, "data": [sha256_file(p) for p in data_files], "base": base_identity})


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """Completed checkpoint folders, newest first (a folder counts once its state.json exists)."""
    found = [p for p in ckpt_dir.glob(f"{_PREFIX}*") if (p / STATE).is_file()] if ckpt_dir.is_dir() else []
    return sorted(found, key=lambda p: p.name, reverse=True)


def _read_state(path: Path) -> dict | None:
    try:
        state = read_json(path / STATE)
        validate(state, "checkpoint", str(path / STATE))
        return state
    except (OSError, ValueError, SchemaError):
        return None


def save_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Write `state` (step, fingerprint, rng, position, history, ...) with the weights and optimizer state.

    Keeps the newest `keep` checkpoints of this fingerprint and removes every checkpoint of another one.
    """
    ckpt_dir = Path(ckpt_dir)
    validate(state, "checkpoint", "checkpoint state")
    final = ckpt_dir / f"{_PREFIX}{state['step']:06d}"
    tmp = ckpt_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(tmp / WEIGHTS, trainable_weights(model))
    save_safetensors(tmp / OPTIMIZER, dict(tree_flatten(optimizer.state)))
    write_json(tmp / STATE, state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    kept = 0
    for path in _checkpoints(ckpt_dir):
        other = _read_state(path)
        if other is not None and other["fingerprint"] == state["fingerprint"] and kept < keep:
            kept += 1
        else:
            shutil.rmtree(path, ignore_errors=True)
    return final


def restore_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer, fingerprint: str) -> tuple[dict | None, str]:
    """Load the newest checkpoint with this fingerprint into model and optimizer; (state or None, what happened)."""
    found = _checkpoints(Path(ckpt_dir))
    for path in found:
        state = _read_state(path)
        if state is None or state["fingerprint"] != fingerprint:
            continue
        load_trainable(model, path / WEIGHTS)
        optimizer.state = tree_unflatten(list(mx.load(str(path / OPTIMIZER)).items()))
        optimizer.init(model.trainable_parameters())  # marks it initialised; every moment is already present
        mx.eval(model.parameters(), optimizer.state)
        return state, f"resuming from {path.name} (Adam moments, RNG and data position restored)"
    if found:
        return None, (f"{len(found)} checkpoint(s) in {ckpt_dir} were made with other train params, data or base "
                      "model: starting fresh")
    return None, "no checkpoint: starting fresh"
