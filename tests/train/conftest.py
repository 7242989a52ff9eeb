"""Trainer-test fixtures on top of tests/conftest.py's session tiny model: fresh trainable models, random batches."""

from __future__ import annotations

import random

import mlx.core as mx
import pytest

from toolsel.io import write_jsonl

TOOLS = ["Bash", "Read", "Edit", "Grep", "Glob", "Write"]


def _load_tiny(path):
    """A fresh model from a directory through our loader (mlx-vlm underneath), patched for training."""
    from toolsel.model.load import load_model

    return load_model(path)[0]


def _random_batch(vocab: int, batch: int = 2, prompt: int = 40, canvas: int = 32, seed: int = 0, pad: int = 0,
                  pad_first: int = 5) -> dict:
    """A left-padded batch (example 0 has `pad_first` pads); the default prompt is longer than the sliding window."""
    keys = mx.random.split(mx.random.key(seed), 2)
    mask = mx.ones((batch, prompt), dtype=mx.int32)
    mask[0, :pad_first] = 0
    ids = mx.random.randint(3, vocab, (batch, prompt), key=keys[0]).astype(mx.int32)
    return {"prompt": mx.where(mask > 0, ids, pad), "prompt_mask": mask,
            "canvas": mx.random.randint(3, vocab, (batch, canvas), key=keys[1]).astype(mx.int32)}


@pytest.fixture
def load_tiny():
    return _load_tiny


@pytest.fixture
def make_batch():
    return _random_batch


@pytest.fixture
def model(tiny_model_dir):
    return _load_tiny(tiny_model_dir)


def write_rendered(out_dir, model_dir, counts=(("train", 24), ("valid", 6))):
    """Schema-valid rendered splits made with the model directory's own chat template (deterministic)."""
    from testkit import rendered_record
    from toolsel.model.chat import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rng = random.Random(0)
    for split, n in counts:
        records = []
        for i in range(n):
            tools = rng.sample(TOOLS, rng.randint(1, 3))
            user = f"task {i}: fix the bug in module {rng.randint(0, 9)} " + "and run the tests " * rng.randint(0, 6)
            records.append(rendered_record(tokenizer, f"{split}-{i}", user, tools))
        write_jsonl(out_dir / f"{split}.jsonl", records)
    return out_dir


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory, tiny_model_dir):
    return write_rendered(tmp_path_factory.mktemp("rendered"), tiny_model_dir)
