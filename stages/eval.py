"""Evaluate tool selection on the test split: the fused model, the base zero-shot and base + adapter (decoded with
the batched block-diffusion sampler), against the frequency floor, train-lookup and retrieval baselines.

Writes metrics/eval.json (system -> scalar metrics with bootstrap CIs, for `dvc metrics diff`), the markdown report,
per-example predictions and the per-tool F1 plot data. Fails when most outputs of a trained model name no
candidate tool (empty, unparseable or channel markers only) instead of writing a quiet zero row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.io import read_json, read_jsonl
from toolsel.params import DEFAULT_PARAMS, load_params
from toolsel.progress import bar, summary
from toolsel.schemas import SchemaError, validate, validate_records

STAGE_VERSION = "1"
SAMPLER_KEYS = ("sampler", "steps", "t_min", "t_max", "entropy_bound", "confidence_threshold", "temperature",
                "stability_threshold", "stop_entropy")


def _fail(message: str) -> None:
    typer.echo(f"eval: {message}", err=True)
    raise typer.Exit(1)


def _records(path: Path, schema: str) -> list[dict]:
    records = list(read_jsonl(path))
    validate_records(records, schema, str(path))
    return records


def eval(  # noqa: A001 - the stage name is the command name
    rendered: Annotated[Path, typer.Option(help="Rendered splits: test.jsonl, train.jsonl, candidates.json.")] = Path(
        "data/rendered"),
    split: Annotated[Path, typer.Option(help="Split records (raw task text for the baselines).")] = Path("data/split"),
    base: Annotated[Path, typer.Option(help="Base stage output (tiny model dir or a real model's identity "
                                            "record).")] = Path("models/base"),
    adapter: Annotated[Path, typer.Option(help="Train stage output (adapter or full fine-tune).")] = Path(
        "models/adapter"),
    fused: Annotated[Path, typer.Option(help="Fuse stage output.")] = Path("models/fused"),
    metrics: Annotated[Path, typer.Option(help="Scalar metrics per system (JSON).")] = Path("metrics/eval.json"),
    report_file: Annotated[Path, typer.Option("--report", help="Markdown results table.")] = Path(
        "metrics/eval_report.md"),
    predictions: Annotated[Path, typer.Option(help="Per-example predictions (JSONL).")] = Path(
        "metrics/eval_predictions.jsonl"),
    plot: Annotated[Path, typer.Option(help="Per-tool F1 plot data (JSON rows).")] = Path(
        "metrics/eval_tool_f1.json"),
    svg: Annotated[Path, typer.Option(help="Per-tool F1 plot (SVG).")] = Path("metrics/eval_tool_f1.svg"),
    systems: Annotated[Optional[str], typer.Option(
        help="Comma-separated model systems: fused,base,adapter [params: eval.systems].")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="[params: eval.temperature]")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="entropy-bound | confidence [params: eval.sampler]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="[params: eval.steps]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="[params: eval.batch_size]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N test examples (smoke runs).")] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = DEFAULT_PARAMS,
) -> None:
    from toolsel.eval.baselines import task_records
    from toolsel.eval.decode import SamplerConfig
    from toolsel.eval.parse import OutputsInsaneError
    from toolsel.eval.report import eval_metrics, write_outputs
    from toolsel.eval.run import run_eval
    from toolsel.model.identity import resolve_model_dir
    from toolsel.model.load import ModelDirError

    try:
        conf = dict(load_params(params)["eval"])
        for key, value in (("temperature", temperature), ("sampler", sampler), ("steps", steps),
                           ("batch_size", batch_size)):
            if value is not None:
                conf[key] = value
        if systems is not None:
            conf["systems"] = [s.strip() for s in systems.split(",") if s.strip()]
        cfg = SamplerConfig(**{k: conf[k] for k in SAMPLER_KEYS})
        test = _records(rendered / "test.jsonl", "rendered")[:limit]
        train = _records(rendered / "train.jsonl", "rendered")
        listing = read_json(rendered / "candidates.json")
        validate(listing, "candidates", str(rendered / "candidates.json"))
        test_tasks = task_records(test, _records(split / "test.jsonl", "example"))
        train_tasks = task_records(train, _records(split / "train.jsonl", "example"))
        base_dir = resolve_model_dir(base)
        if not test:
            raise ValueError(f"{rendered / 'test.jsonl'}: no test examples")
    except (SchemaError, ValueError, KeyError, OSError) as err:
        _fail(str(err))

    bars = []

    def progress(system: str, total: int):
        bars.append(bar(total=total, desc=f"eval: decode {system}", unit="ex"))
        return bars[-1].update

    try:
        result, decodes = run_eval(
            test, test_tasks, train_tasks, listing["tools"], conf["systems"], base_dir=base_dir, fused_dir=fused,
            adapter_dir=adapter, cfg=cfg, seeds=conf["seeds"], batch_size=conf["batch_size"],
            bucket=conf["prompt_bucket"], kernels=conf["kernels"], floor_k=conf["floor_k"],
            retrieval_k=conf["retrieval_k"], vote_fraction=conf["retrieval_vote_fraction"],
            bootstrap_samples=conf["bootstrap_samples"],
            bootstrap_seed=conf["bootstrap_seed"], head_coverage=conf["head_coverage"],
            max_bad_fraction=conf["max_bad_fraction"], progress=progress,
            log=lambda m: typer.echo(f"eval: {m}", err=True))
    except OutputsInsaneError as err:
        _fail(str(err))
    except (ModelDirError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    finally:
        for b in bars:
            b.close()

    validate(eval_metrics(result), "eval_metrics", str(metrics))
    seeds = conf["seeds"]
    note = (f"Models decoded with the `{cfg.sampler}` sampler (stage version {STAGE_VERSION}, {conf['kernels']} "
            f"kernels): {cfg.steps} steps, "
            f"schedule temperature {cfg.t_max} -> {cfg.t_min}, "
            + (f"entropy bound {cfg.entropy_bound}" if cfg.sampler == "entropy-bound"
               else f"confidence threshold {cfg.confidence_threshold}")
            + f", early stop after {cfg.stability_threshold} stable step(s) with mean entropy < {cfg.stop_entropy}; "
            + ("greedy (temperature 0)" if cfg.temperature <= 0 else f"temperature {cfg.temperature}")
            + (f", canvas seed {seeds[0]}" if len(seeds) == 1 else f", mean over seeds {seeds}") + "."
            + (" The start canvas and renoising are random even when greedy: a single seed's answers vary with it"
               " (set `eval.seeds` to several to average)." if len(seeds) == 1 else ""))
    write_outputs(result, metrics_path=metrics, report_path=report_file, predictions_path=predictions,
                  plot_path=plot, svg_path=svg, note=note)
    m = result["metrics"]
    headline = ", ".join(f"{s} {m[s]['jaccard']:.3f}" for s in result["systems"])
    speed = ", ".join(f"{s} {d.samples_per_second:.1f}/s {d.mean_steps:.1f} steps" for s, d in decodes.items())
    summary("eval", f"{result['n']} test examples; Jaccard {headline}; decode {speed} -> {metrics}")
