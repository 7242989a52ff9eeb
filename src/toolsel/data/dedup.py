"""Collapse exact duplicate (normalized prompt, tool set) pairs into one deterministic representative."""

from __future__ import annotations

import polars as pl

from toolsel.data.normalize import normalize_prompt, tool_set_key

# Representative of a duplicate group = the first by provenance (source file, line), then id: the same input
# set always keeps the same record, whatever order the records arrive in. One sort in that order serves both:
# the first row of each group in it is the representative, and the kept rows come out in provenance order.
_ORDER = ["_file", "_line", "_id", "_row"]


def dedup_examples(records: list[dict]) -> tuple[list[dict], dict]:
    """Return (kept records in provenance order, each with `dup_count`; metrics).

    Two examples are duplicates when their prompts are equal after `normalize_prompt` and they used the same
    *set* of tools (order ignored: the representative keeps its own order). `dup_count` adds up incoming
    `dup_count`s, so deduplicating deduplicated data changes nothing.
    """
    frame = pl.DataFrame(
        {
            "_row": pl.Series(range(len(records)), dtype=pl.Int64),
            "_norm": [normalize_prompt(r["prompt"]) for r in records],
            "_tools": [tool_set_key(r["tools"]) for r in records],
            "_file": [r["source_file"] for r in records],
            "_line": pl.Series([r["source_line"] for r in records], dtype=pl.Int64),
            "_id": [r["id"] for r in records],
            "_dup": pl.Series([r.get("dup_count", 1) for r in records], dtype=pl.Int64),
        },
        schema_overrides={"_norm": pl.String, "_tools": pl.String, "_file": pl.String, "_id": pl.String},
    )
    kept = (
        frame.sort(_ORDER)
        .with_columns(pl.col("_dup").sum().over(["_norm", "_tools"]).alias("_count"))
        .unique(subset=["_norm", "_tools"], keep="first", maintain_order=True)
    )
    out = [{**records[row], "dup_count": count} for row, count in zip(kept["_row"].to_list(),
                                                                       kept["_count"].to_list())]

    prompts_tool_sets = kept.group_by("_norm").agg(pl.len().alias("n"))
    metrics = {
        "records_in": len(records),
        "records_out": len(out),
        "duplicates_removed": len(records) - len(out),
        "duplicate_groups": int((kept["_count"] > 1).sum()) if len(out) else 0,
        "max_dup_count": int(kept["_count"].max()) if len(out) else 0,
        "examples_represented": int(kept["_count"].sum()) if len(out) else 0,
        "distinct_prompts": prompts_tool_sets.height,
        "prompts_with_several_tool_sets": int((prompts_tool_sets["n"] > 1).sum()) if len(out) else 0,
    }
    return out, metrics
