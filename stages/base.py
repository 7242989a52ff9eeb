"""Provide the base model: build and briefly pretrain the embedded tiny DiffusionGemma, or record a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.io import read_jsonl, write_json
from toolsel.params import load_params
from toolsel.progress import summary
from toolsel.schemas import SchemaError, validate_records

STAGE_VERSION = "1"


def base(
    model_path: Annotated[Optional[str], typer.Option("--model-path", help="`tiny` or a local DiffusionGemma "
                                                      "directory (default: params model.path)")] = None,
    train: Annotated[Path, typer.Option(help="Training split whose task texts build and pretrain the tiny "
                                        "model (never tool lists, never valid/test)")] = Path("data/split/train.jsonl"),
    output: Annotated[Path, typer.Option(help="Output: the tiny model directory, or a real model's "
                                         "identity record")] = Path("models/base"),
    metrics: Annotated[Path, typer.Option(help="Stage metrics JSON")] = Path("metrics/base.json"),
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read defaults from")] = Path("params.yaml"),
) -> None:
    from toolsel import blas
    from toolsel.model.base import build_tiny_base, describe_real_base

    try:
        all_params = load_params(params)
        cfg = all_params["base"]
        model_path = model_path or all_params["model"]["path"]
        if model_path != "tiny":
            identity = describe_real_base(model_path, output, STAGE_VERSION)
            write_json(metrics, {"kind": "real", "weight_files": len(identity.get("files", {}))})
            summary("base", f"real model {model_path}: identity recorded in {output}")
            return
        records = list(read_jsonl(train))
        validate_records(records, "example", str(train))
    except (SchemaError, ValueError, FileNotFoundError) as err:
        typer.echo(f"base: {err}", err=True)
        raise typer.Exit(1)
    blas.warn_if_slow()
    texts = [r["prompt"] for r in records]
    tool_names = sorted({tool for r in records for tool in r["tools"]})
    result = build_tiny_base(texts, tool_names, output, tiny=cfg["tiny"], pretrain=cfg["pretrain"], seed=cfg["seed"],
                             stage_version=STAGE_VERSION, log=lambda m: typer.echo(m, err=True))
    write_json(metrics, result)
    summary("base", f"tiny DiffusionGemma, {result['parameters']:,} params, vocab {result['vocab_size']}, "
                    f"pretrained {result['pretrain_steps']} steps in {result['pretrain_seconds']} s "
                    f"(loss {result['pretrain_loss_first']} -> {result['pretrain_loss_last']}) -> {output}")
