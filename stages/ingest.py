"""Ingest agent traces (Claude Code sessions, chat JSONL, rendered pairs) into redacted typed-task examples.

Writes OUTPUT/examples.jsonl, OUTPUT/quarantine.jsonl, OUTPUT/manifest.json and the metrics file. Every option
defaults to the `ingest:` section of params.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.data.formats import Options
from toolsel.data.ingest import SourceError, ingest as run_ingest, resolve_sources
from toolsel.io import atomic_open, write_json
from toolsel.params import DEFAULT_PARAMS, section
from toolsel.progress import bar, summary
from toolsel.schemas import SchemaError, validate

STAGE_VERSION = "1"
DEFAULTS = {"include_subagent_tools": False, "max_line_bytes": 16_000_000, "max_prompt_chars": 20_000}


def _params(path: Path, explicit: bool, have_sources: bool) -> dict:
    """The ingest section; with --sources and no params file at all, built-in defaults (runs anywhere)."""
    if not path.exists() and not explicit and have_sources:
        return dict(DEFAULTS)
    return {**DEFAULTS, **section(path, "ingest")}


def ingest(
    sources: Annotated[Optional[list[str]], typer.Option(
        "--sources", help="File, directory (all *.jsonl below) or glob; repeatable. Default: ingest.sources.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Output directory.")] = Path("data/ingested"),
    metrics: Annotated[Optional[Path], typer.Option(help="Metrics JSON file.")] = Path("metrics/ingest.json"),
    params: Annotated[Optional[Path], typer.Option(help="params.yaml to read the ingest section from.")] = None,
    include_subagent_tools: Annotated[Optional[bool], typer.Option(
        help="Count subagents' tool calls in the parent task (default: the parent's Task call stands for them).")] = None,
    max_line_bytes: Annotated[Optional[int], typer.Option(help="Lines longer than this are quarantined unread.")] = None,
    max_prompt_chars: Annotated[Optional[int], typer.Option(help="Longer task texts are truncated (counted).")] = None,
    workers: Annotated[int, typer.Option(help="Reader processes; 0 = auto (2 when the input is large).")] = 0,
) -> None:
    try:
        conf = _params(params or DEFAULT_PARAMS, params is not None, bool(sources))
    except SchemaError as err:
        typer.echo(f"ingest: {err}", err=True)
        raise typer.Exit(1)
    for key, value in (("include_subagent_tools", include_subagent_tools), ("max_line_bytes", max_line_bytes),
                       ("max_prompt_chars", max_prompt_chars)):
        if value is not None:
            conf[key] = value
    entries = list(sources) if sources else conf.get("sources")
    if not entries:
        typer.echo("ingest: no sources (give --sources or set ingest.sources in params.yaml)", err=True)
        raise typer.Exit(1)
    try:
        files = resolve_sources(entries)
    except SourceError as err:
        typer.echo(f"ingest: {err}", err=True)
        raise typer.Exit(1)
    opts = Options(conf["include_subagent_tools"], conf["max_line_bytes"], conf["max_prompt_chars"])

    total = sum(os.path.getsize(f.path) for f in files)
    with bar(total=total, desc="ingest", unit="B") as progress, \
            atomic_open(output / "examples.jsonl") as examples_out, \
            atomic_open(output / "quarantine.jsonl") as quarantine_out:
        report = run_ingest(files, opts, examples_out, quarantine_out, workers=workers,
                            on_file=lambda result: progress.update(result.bytes))
    m = report["metrics"]
    manifest = {
        "stage": "ingest", "stage_version": STAGE_VERSION,
        "params": {"sources": entries, **{k: conf[k] for k in DEFAULTS}},
        "inputs": report["inputs"],
        "counts": {"files": len(files), "lines": m["lines"]["read"], "examples": m["examples"],
                   "quarantined": m["quarantine"]["records"]},
    }
    validate(manifest, "ingest_manifest", str(output / "manifest.json"))
    validate(m, "ingest_metrics", str(metrics))
    write_json(output / "manifest.json", manifest)
    write_json(metrics, m)
    t = m["tasks"]
    summary("ingest", f"{len(files)} files, {m['lines']['read']:,} lines -> {m['examples']:,} examples "
                      f"({t['typed']:,} typed tasks, {t['skipped']:,} skipped), {m['quarantine']['records']:,} "
                      f"quarantined, {sum(m['redactions'].values()):,} secrets redacted -> {output}")
