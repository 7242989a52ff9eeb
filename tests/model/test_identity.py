"""The identity record of a model directory: small, stable, and weight hashes computed once."""

from __future__ import annotations

import os
import shutil

import pytest

from toolsel.io import sha256_file
from toolsel.model import identity


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TOOLSEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    return "base"  # relative, as a user would write model.path


def count_hashing(monkeypatch):
    calls = []

    def counting(path, *args, **kwargs):
        calls.append(os.path.basename(path))
        return sha256_file(path, *args, **kwargs)

    monkeypatch.setattr(identity, "sha256_file", counting)
    return calls


def test_record_names_path_config_and_every_file(model_dir):
    record = identity.model_identity(model_dir)
    assert record["path"] == "base"  # as given: no absolute path in a DVC output
    assert record["config_sha256"] == sha256_file("base/config.json")
    assert record["files"]["model.safetensors"]["sha256"] == sha256_file("base/model.safetensors")
    assert {"tokenizer.json", "chat_template.jinja", "generation_config.json"} <= record["files"].keys()
    assert record["quantization"] is None and record["canvas_length"] == 32
    assert identity.model_identity(model_dir) == record


def test_weight_hashes_are_reused_while_size_and_mtime_are_unchanged(model_dir, monkeypatch):
    first = identity.model_identity(model_dir)
    assert identity.cache_file().exists()
    calls = count_hashing(monkeypatch)
    assert identity.model_identity(model_dir) == first
    assert "model.safetensors" not in calls  # reused from the cache

    weights = os.path.join(model_dir, "model.safetensors")
    stat = os.stat(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    calls.clear()
    assert identity.model_identity(model_dir) == first  # same bytes, same record
    assert calls.count("model.safetensors") == 1  # but rehashed once the mtime moved

    with open(weights, "r+b") as handle:  # same size, new content, new mtime
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    changed = identity.model_identity(model_dir)
    assert changed["files"]["model.safetensors"]["sha256"] != first["files"]["model.safetensors"]["sha256"]


def test_cache_is_keyed_by_absolute_path(model_dir, tmp_path):
    identity.model_identity(model_dir)
    cache = identity._load_cache(identity.cache_file())
    assert str((tmp_path / "base" / "model.safetensors").resolve()) in cache
