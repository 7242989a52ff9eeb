"""Fine-tune DiffusionGemma on the rendered tool-selection data (LoRA / QLoRA / full) with the block-diffusion loss.

Writes the adapter (adapters.safetensors + adapter_config.json, loadable with mlx_vlm.load(base, adapter_path=...);
a full model directory for `method: full`), resumable checkpoints, metrics/train.json and a per-step loss log for
`dvc plots show`. Resumes from the newest checkpoint made with the same params, data and base. Every option
defaults to the `train:` section of params.yaml; the learning rate is the top-level `lr`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.io import atomic_open, read_jsonl, write_json
from toolsel.params import DEFAULT_PARAMS, load_params
from toolsel.progress import summary
from toolsel.schemas import SchemaError, validate, validate_records

STAGE_VERSION = "1"
LOG_COLUMNS = ("step", "train_loss", "val_loss", "lr")


def _fail(message: str) -> None:
    typer.echo(f"train: {message}", err=True)
    raise typer.Exit(1)


def write_log(path: Path, history: list[dict]) -> None:
    """One CSV row per update; `val_loss` is empty where no validation ran."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(c) is None else row[c] for c in LOG_COLUMNS])
    with atomic_open(path) as handle:
        handle.write(text.getvalue().encode())


def train(
    data: Annotated[Path, typer.Option(
        help="Folder with the rendered train.jsonl and valid.jsonl.")] = Path("data/rendered"),
    model: Annotated[Optional[Path], typer.Option(
        help="Base model directory. Default: models/base when model.path is `tiny`, else model.path.")] = None,
    output: Annotated[Path, typer.Option(help="Adapter output folder.")] = Path("models/adapter"),
    checkpoints: Annotated[Path, typer.Option(
        help="Checkpoint folder (kept across runs).")] = Path("models/checkpoints"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON file.")] = Path("metrics/train.json"),
    log: Annotated[Path, typer.Option(help="Per-step loss log (CSV) for dvc plots.")] = Path("metrics/train_log.csv"),
    params: Annotated[Path, typer.Option(help="params.yaml to read `lr` and the train section from.")] = DEFAULT_PARAMS,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate. Default: top-level lr.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer updates. Default: train.steps.")] = None,
    method: Annotated[Optional[str], typer.Option(help="lora | full. Default: train.method.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from a matching checkpoint if there is one.")] = True,
) -> None:
    try:
        conf = load_params(params)
    except SchemaError as err:
        _fail(str(err))
    if "train" not in conf:
        _fail(f"{params}: no `train:` section")
    hp = {"lr": conf["lr"], **conf["train"]}
    for key, value in (("lr", lr), ("steps", steps), ("method", method)):
        if value is not None:
            hp[key] = value
    if hp["method"] not in ("lora", "full"):
        _fail(f"--method must be lora or full, got {hp['method']!r}")
    model_dir = model or Path("models/base" if conf["model"]["path"] == "tiny" else conf["model"]["path"]).expanduser()

    from toolsel.model.load import ModelDirError, validate_model_dir
    from toolsel.train.fit import fit

    try:
        validate_model_dir(model_dir)
        counts = {split: validate_records(read_jsonl(data / f"{split}.jsonl"), "rendered", str(data / f"{split}.jsonl"))
                  for split in ("train", "valid")}
    except (ModelDirError, SchemaError, OSError, ValueError) as err:
        _fail(str(err))
    if counts["train"] == 0:
        _fail(f"{data / 'train.jsonl'} has no examples")

    try:
        result, history = fit(data, model_dir, output, checkpoints, hp, resume=resume,
                              log=lambda m: typer.echo(f"train: {m}", err=True))
    except ValueError as err:  # e.g. responses longer than the canvas, unknown LoRA targets
        _fail(str(err))
    validate(result, "train_metrics", str(metrics))
    write_json(metrics, result)
    write_log(log, history)
    write_json(output / "manifest.json", {"stage": "train", "stage_version": STAGE_VERSION, "params": hp,
                                          "examples": counts, "steps": result["steps"]})
    val = result["final_val_loss"]
    summary("train", f"{result['method']} {result['steps']} steps, train loss {result['final_train_loss']:.4f}, "
                     f"val loss {'n/a' if val is None else f'{val:.4f}'}, {result['tokens_per_sec'] or 0:.0f} tok/s, "
                     f"{result['trainable_params']:,} trainable params -> {output}")
