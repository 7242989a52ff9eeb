"""Group-aware train/valid/test split, stable under added data, with zero overlap enforced.

Group key `session`, `project` or `template` (the prompt with paths, numbers, hashes, quoted strings and URLs
masked); groups sharing a normalized prompt are merged; each group goes to the split chosen by
sha256(seed, group). The stage fails, writing nothing, if any (prompt, tools) pair, normalized prompt or group
is in two splits. The manifest records each split's sha256 and a train-lookup contamination probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.data.records import SPLITS, gc_paused, read_validated
from toolsel.data.split import GROUP_KEYS, SplitOverlapError, split_examples
from toolsel.io import sha256_file, write_json, write_jsonl
from toolsel.params import DEFAULT_PARAMS, section
from toolsel.progress import summary
from toolsel.schemas import SchemaError, validate

STAGE_VERSION = "1"


def _split_metrics(splits: dict[str, list[dict]], report: dict) -> dict:
    total = sum(len(records) for records in splits.values())
    return {
        "examples": {name: len(records) for name, records in splits.items()},
        "groups": {name: len({r["group"] for r in records}) for name, records in splits.items()},
        "fractions_achieved": {name: round(len(records) / total, 6) if total else 0.0
                               for name, records in splits.items()},
        "groups_before_merge": report["groups_before_merge"],
        "groups_after_merge": report["groups"],
        "largest_group_examples": report["largest_group_examples"],
        "overlap_total": sum(n for kinds in report["overlap"].values() for n in kinds.values()),
        "contamination": {name: {k: v for k, v in probe.items() if k != "near_hit_ids"}
                          for name, probe in report["contamination"].items()},
    }


@gc_paused()
def split(
    input: Annotated[Path, typer.Option(help="Deduplicated examples (JSONL, schema `example`).")] = Path(
        "data/dedup/examples.jsonl"),
    output_dir: Annotated[Path, typer.Option(help="Writes train/valid/test.jsonl and manifest.json here.")] = Path(
        "data/split"),
    metrics: Annotated[Path, typer.Option(help="Split counts and contamination probe (JSON).")] = Path(
        "metrics/split.json"),
    group_key: Annotated[Optional[str], typer.Option(
        help=f"Task identity: {' | '.join(GROUP_KEYS)} [params: split.group_key].")] = None,
    train_fraction: Annotated[Optional[float], typer.Option(help="[params: split.fractions.train]")] = None,
    valid_fraction: Annotated[Optional[float], typer.Option(help="[params: split.fractions.valid]")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="[params: split.fractions.test]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Salt of the group hash [params: split.seed].")] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = DEFAULT_PARAMS,
) -> None:
    try:
        needs_params = None in (group_key, train_fraction, valid_fraction, test_fraction, seed)
        conf = section(params, "split") if needs_params or params.exists() else {}
        group_key = group_key or conf["group_key"]
        given = {"train": train_fraction, "valid": valid_fraction, "test": test_fraction}
        fractions = {name: given[name] if given[name] is not None else conf["fractions"][name] for name in SPLITS}
        seed = seed if seed is not None else conf["seed"]
        if group_key not in GROUP_KEYS:
            raise ValueError(f"--group-key must be one of {', '.join(GROUP_KEYS)}, got {group_key!r}")
        records = read_validated(input, "example", desc="split: read")
        splits, report = split_examples(records, group_key, fractions, seed)
    except (SchemaError, SplitOverlapError, ValueError, OSError) as err:
        typer.echo(f"split: {err}", err=True)
        raise typer.Exit(1)

    manifest = {
        "stage": "split",
        "stage_version": STAGE_VERSION,
        "params": {"group_key": group_key, "fractions": fractions, "seed": seed},
        "input": {"path": str(input), "sha256": sha256_file(input), "records": len(records)},
        "splits": {},
        **{key: report[key] for key in ("groups_before_merge", "groups", "largest_group_examples", "overlap",
                                        "contamination")},
    }
    for name, rows in splits.items():
        path = output_dir / f"{name}.jsonl"
        write_jsonl(path, rows)
        manifest["splits"][name] = {"path": f"{name}.jsonl", "sha256": sha256_file(path), "examples": len(rows),
                                    "groups": len({r["group"] for r in rows}),
                                    "examples_represented": sum(r.get("dup_count", 1) for r in rows)}
    counts = _split_metrics(splits, report)
    validate(manifest, "split_manifest", "split manifest")
    validate(counts, "split_metrics", str(metrics))
    write_json(output_dir / "manifest.json", manifest)
    write_json(metrics, counts)
    test_probe = report["contamination"]["test_vs_train"]
    summary("split", " / ".join(f"{name} {len(rows)}" for name, rows in splits.items())
            + f" examples in {report['groups']} groups ({group_key}); overlap 0; test prompts found in train: "
              f"{test_probe['exact_hits']} exact, {test_probe['near_hits']} near -> {output_dir}")
