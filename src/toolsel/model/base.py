"""The base model every later stage starts from: the embedded tiny DiffusionGemma, or a user's real directory.

`models/base/` is the base stage's one output. For `tiny` it IS the model directory (small, DVC-cached). For a real
model it holds only `identity.json` naming the user's directory (never a copy of 16 GB of weights); downstream
stages call `toolsel.model.identity.resolve_model_dir` and treat both the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from toolsel.io import write_json
from toolsel.model.identity import IDENTITY



def describe_real_base(model_path: str | os.PathLike, out_dir: str | os.PathLike, stage_version: str) -> dict:
    """Validate a real model directory and write its small identity record (weights hashed once, then cached)."""
    from toolsel.model.identity import model_identity
    from toolsel.model.load import validate_model_dir

    model_path = Path(model_path).expanduser().resolve()
    validate_model_dir(model_path)
    identity = {**model_identity(model_path), "path": str(model_path), "kind": "real", "stage_version": stage_version}
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    write_json(out_dir / IDENTITY, identity)
    return identity


def build_tiny_base(texts: list[str], tool_names: list[str], out_dir: str | os.PathLike, *, tiny: dict,
                    pretrain: dict, seed: int, stage_version: str, log=print) -> dict:
    """Tokenizer from `texts` (+ the tool names, as vocabulary only), tiny model, brief pretraining on `texts`,
    written in the real directory format.

    The tool names are vocabulary, never labels: they enter the tokenizer's training text as `- Name` lines, so a
    response costs a few tokens per tool and fits the tiny canvas, and the pretraining text as shuffled
    "Available tools: A, B, ..." lines, the candidate list every prompt shows (without them the tool tokens are only
    ever trained as wrong answers, and a LoRA with frozen embeddings cannot learn to emit them). Which tools a task
    uses never reaches the base. Returns the metrics. The result loads through the same loader as the real model (checked before return).
    """
    from toolsel.model.load import load_model
    from toolsel.model.pretrain import pretrain as run_pretrain
    from toolsel.model.pretrain import text_examples, tool_menus
    from toolsel.model.tiny import build_tiny, quantize_tiny, tiny_config
    from toolsel.model.tokenizer import build_tokenizer

    out_dir = Path(out_dir)
    config = tiny_config(**tiny["config"])
    with tempfile.TemporaryDirectory(prefix="toolsel-base-") as tmp:
        tmp = Path(tmp)
        # twice: the BPE trainer merges only pairs seen at least twice (min_frequency 2)
        vocabulary_text = texts + [f"- {name}" for name in sorted(set(tool_names))] * 2
        build_tokenizer(vocabulary_text, tiny["vocab_size"], tmp / "tokenizer")
        build_tiny(tmp / "init", tmp / "tokenizer", config, seed=seed)
        model, tokenizer = load_model(tmp / "init")
        corpus = texts + tool_menus(tool_names, max(1, len(texts) // 10), seed)
        examples = text_examples(tokenizer, corpus, model.config.canvas_length, pretrain["max_prompt_tokens"], seed)
        log(f"pretraining the tiny model on {len(examples)} task texts ({pretrain['steps']} steps)")
        tic = time.perf_counter()
        weights, history = run_pretrain(model, examples, tokenizer, steps=pretrain["steps"],
                                        batch_size=pretrain["batch_size"], lr=pretrain["lr"], seed=seed,
                                        encoder_loss_weight=pretrain["encoder_loss_weight"], shards=pretrain["shards"])
        seconds = time.perf_counter() - tic
        staged = tmp / "final"
        build_tiny(staged, tmp / "tokenizer", config, seed=seed, weights=weights)
        if tiny["quantize_bits"]:
            staged = quantize_tiny(staged, tmp / "quantized", bits=tiny["quantize_bits"])
        load_model(staged)  # the same loader the real model goes through; fails here, not downstream
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, out_dir)
    n_params = sum(int(v.size) for v in weights.values())
    write_json(out_dir / "toolsel_base.json", {"kind": "tiny", "stage_version": stage_version, "seed": seed,
                                               "pretrain": pretrain, "tiny": tiny})
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    return {"kind": "tiny", "parameters": n_params, "vocab_size": len(tokenizer), "pretrain_examples": len(examples),
            "pretrain_steps": len(history), "pretrain_loss_first": round(first, 4), "pretrain_loss_last": round(last, 4),
            "pretrain_seconds": round(seconds, 1), "quantize_bits": tiny["quantize_bits"]}
