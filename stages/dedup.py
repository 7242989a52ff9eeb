"""Collapse exact duplicate (prompt, tool set) pairs after normalization (NFKC, casefold, whitespace).

Keeps one deterministic representative per pair (first by source file and line) with a `dup_count`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.data.dedup import dedup_examples
from toolsel.data.records import gc_paused, read_validated
from toolsel.io import sha256_file, write_json, write_jsonl
from toolsel.params import DEFAULT_PARAMS, section
from toolsel.progress import summary
from toolsel.schemas import SchemaError, validate

STAGE_VERSION = "1"


@gc_paused()
def dedup(
    input: Annotated[Path, typer.Option(help="Ingested examples (JSONL, schema `example`).")] = Path(
        "data/ingested/examples.jsonl"),
    output: Annotated[Path, typer.Option(help="Deduplicated examples; manifest.json is written beside it.")] = Path(
        "data/dedup/examples.jsonl"),
    metrics: Annotated[Path, typer.Option(help="Before/after counts (JSON).")] = Path("metrics/dedup.json"),
    params: Annotated[Optional[Path], typer.Option(
        help="params.yaml to validate (default: ./params.yaml when present; dedup itself has no knobs).")] = None,
) -> None:
    try:
        if params is not None or DEFAULT_PARAMS.exists():
            section(params or DEFAULT_PARAMS, "dedup")
        records = read_validated(input, "example", desc="dedup: read")
    except (SchemaError, ValueError, OSError) as err:
        typer.echo(f"dedup: {err}", err=True)
        raise typer.Exit(1)

    kept, counts = dedup_examples(records)
    write_jsonl(output, kept)
    manifest = {
        "stage": "dedup",
        "stage_version": STAGE_VERSION,
        "input": {"path": str(input), "sha256": sha256_file(input), "records": len(records)},
        "output": {"path": str(output), "sha256": sha256_file(output), "records": len(kept)},
        "normalization": "NFKC, casefold, whitespace collapsed; tools compared as a set",
    }
    validate(manifest, "dedup_manifest", "dedup manifest")
    validate(counts, "dedup_metrics", str(metrics))
    write_json(output.parent / "manifest.json", manifest)
    write_json(metrics, counts)
    summary("dedup", f"{counts['records_in']} -> {counts['records_out']} examples "
                     f"({counts['duplicates_removed']} duplicates in {counts['duplicate_groups']} groups) -> {output}")
