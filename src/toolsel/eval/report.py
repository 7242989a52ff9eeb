"""Score every system on the test split and write eval.json, the markdown report, predictions and the plot.

`score_systems` is the one computation; the writers below only format its result. Prediction records (from
`predictions_from_texts` for models, `baselines.run_baselines` for baselines) are dicts with `id`,
`predicted` (valid names, in order), `invalid`, `raw`, `detail`, `seed`; several records per id (one per seed)
are averaged per example before the bootstrap.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Mapping, Sequence

from toolsel.eval import metrics as M
from toolsel.eval.parse import parse_tools
from toolsel.io import atomic_open, write_json, write_jsonl

SYSTEM_ORDER = ("fused", "adapter", "base", "retrieval", "train_lookup", "floor")
MODEL_SYSTEMS = ("fused", "adapter", "base")
DEFAULT_PAIRS = (("fused", "floor"), ("adapter", "floor"), ("fused", "base"), ("fused", "retrieval"))
HEADLINE = ("jaccard", "exact", "precision", "recall", "top1", "invalid_rate")


def predictions_from_texts(ids: Sequence[str], raw_texts: Sequence[str], candidates: Sequence[str],
                           seed: int | None = None) -> list[dict]:
    """Prediction records of a model system from its decoded texts (same order as `ids`)."""
    out = []
    for example_id, text in zip(ids, raw_texts, strict=True):
        parsed = parse_tools(text, candidates)
        detail = "marker_only" if parsed.marker_only else "empty" if parsed.empty else None
        out.append({"id": example_id, "predicted": parsed.valid, "invalid": parsed.invalid, "raw": text,
                    "detail": detail, "seed": seed})
    return out


def _ordered(names) -> list[str]:
    known = [s for s in SYSTEM_ORDER if s in names]
    return known + sorted(set(names) - set(known))


def _group_by_id(system: str, preds: Sequence[dict], ids: Sequence[str]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for pred in preds:
        grouped[pred["id"]].append(pred)
    missing, extra = set(ids) - grouped.keys(), grouped.keys() - set(ids)
    if missing or extra:
        raise ValueError(f"system {system!r}: predictions do not cover the test set exactly "
                         f"({len(missing)} ids missing, {len(extra)} unknown)")
    for example_id, runs in grouped.items():
        if len({p.get("seed") for p in runs}) != len(runs):
            raise ValueError(f"system {system!r}: id {example_id!r} predicted twice with the same seed")
    return grouped


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def _score_system(system: str, preds: Sequence[dict], gold: Mapping[str, list[str]], head: set[str],
                  bootstrap_samples: int, seed: int) -> dict:
    """One system: per-example scores (seeds averaged), prediction records, per-tool and head/tail scores."""
    grouped = _group_by_id(system, preds, list(gold))
    scores, records, tool_preds, tool_gold, weights = [], [], [], [], []
    for example_id, gold_tools in gold.items():
        runs = sorted(grouped[example_id], key=lambda p: (p.get("seed") is not None, p.get("seed") or 0))
        per_run = [M.score_example(p["predicted"], gold_tools, len(p["invalid"])) for p in runs]
        scores.append({m: sum(s[m] for s in per_run) / len(per_run) for m in M.EXAMPLE_METRICS})
        for pred, score in zip(runs, per_run):
            tool_preds.append(pred["predicted"])
            tool_gold.append(gold_tools)
            weights.append(1 / len(runs))
            records.append({"system": system, "id": example_id, "seed": pred.get("seed"), "gold": gold_tools,
                            "predicted": pred["predicted"], "invalid": pred["invalid"], "raw": pred.get("raw"),
                            "detail": pred.get("detail"), "jaccard": _round(score["jaccard"]),
                            "exact": score["exact"] == 1})
    per_tool = M.per_tool_scores(tool_preds, tool_gold, weights)
    groups = M.group_scores(per_tool, head)
    flat = M.aggregate(scores, bootstrap_samples, seed)
    flat.update(head_f1=groups["head"]["f1"], tail_f1=groups["tail"]["f1"])
    return {"metrics": flat, "groups": groups, "per_tool": per_tool, "records": records,
            "jaccard": [s["jaccard"] for s in scores]}


def score_systems(predictions: Mapping[str, Sequence[dict]], test_records: Sequence[Mapping],
                  train_records: Sequence[Mapping], *, bootstrap_samples: int = 1000, seed: int = 0,
                  head_coverage: float = 0.8, pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
                  extra: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Metrics with bootstrap CIs, head/tail per-tool scores and paired Jaccard tests for every system.

    `test_records` give `id` and gold `tools`; `train_records` give `tools` (tool frequency, head/tail);
    `extra[system]` adds scalars to that system's metrics (e.g. `mean_steps_per_block`)."""
    gold = {r["id"]: list(r["tools"]) for r in test_records}
    if len(gold) != len(test_records):
        raise ValueError("test records repeat an id")
    frequencies = M.tool_frequencies(r["tools"] for r in train_records)
    head = M.head_tools(frequencies, head_coverage)
    systems = _ordered(predictions)
    scored = {s: _score_system(s, predictions[s], gold, head, bootstrap_samples, seed) for s in systems}
    metrics = {s: {**scored[s]["metrics"], **(extra or {}).get(s, {})} for s in systems}
    paired = []
    for a, b in pairs:
        if a in scored and b in scored:
            test = M.paired_bootstrap(scored[a]["jaccard"], scored[b]["jaccard"], bootstrap_samples, seed)
            paired.append({"a": a, "b": b, **test})
            metrics[a].update({f"jaccard_vs_{b}": test["diff"], f"jaccard_vs_{b}_lo": test["lo"],
                               f"jaccard_vs_{b}_hi": test["hi"], f"jaccard_vs_{b}_p": test["p_value"]})
    counts = dict(frequencies)
    support = sorted(M.tool_frequencies(gold.values()), key=lambda ts: (-counts.get(ts[0], 0), -ts[1], ts[0]))
    tools = [{"tool": t, "train_count": counts.get(t, 0), "test_support": n, "group": "head" if t in head else "tail"}
             for t, n in support]
    lookups = scored["train_lookup"]["records"] if "train_lookup" in scored else None
    return {"n": len(gold), "bootstrap_samples": bootstrap_samples, "seed": seed, "head_coverage": head_coverage,
            "systems": systems, "metrics": metrics, "paired": paired, "tools": tools,
            "groups": {s: scored[s]["groups"] for s in systems},
            "per_tool": {s: scored[s]["per_tool"] for s in systems},
            "records": [r for s in systems for r in scored[s]["records"]],
            "lookup_exact_hits": sum(r["detail"] == "exact" for r in lookups) if lookups is not None else None}


def eval_metrics(result: Mapping) -> dict[str, dict[str, float]]:
    """`metrics/eval.json`: system -> flat scalars (rounded to 6 places for readable diffs)."""
    return {s: {k: _round(v) for k, v in result["metrics"][s].items()} for s in result["systems"]}


def _ci(m: Mapping, name: str) -> str:
    return f"{m[name]:.3f} [{m[name + '_lo']:.3f}, {m[name + '_hi']:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def render_report(result: Mapping, plot_svg: str | None = None, note: str | None = None) -> str:
    """`metrics/eval_report.md`: the results table with CIs, paired tests, head/tail and per-tool F1;
    `note` (e.g. the sampler and temperature used) follows the first paragraph."""
    systems, m = result["systems"], result["metrics"]
    lines = ["# Tool selection: test results", "",
             f"{result['n']} test examples. Means over examples with percentile bootstrap 95% intervals "
             f"({result['bootstrap_samples']} resamples, seed {result['seed']}).", ""]
    if note:
        lines += [note, ""]
    header = ["System", "Jaccard", "Exact", "Precision", "Recall", "Top-1", "Invalid", "Empty", "Steps/block"]
    rows = [[s, *(_ci(m[s], k) for k in HEADLINE), f"{m[s]['empty_rate']:.3f}",
             f"{m[s]['mean_steps_per_block']:.1f}" if "mean_steps_per_block" in m[s] else "-"] for s in systems]
    lines += _table(header, rows)
    if result["paired"]:
        lines += ["", "## Paired bootstrap on Jaccard (A - B, same examples)", ""]
        lines += _table(["A", "B", "A - B", "95% CI", "p", "CI excludes 0"],
                        [[p["a"], p["b"], f"{p['diff']:+.3f}", f"[{p['lo']:+.3f}, {p['hi']:+.3f}]",
                          f"{p['p_value']:.3f}", "yes" if p["significant"] else "no"] for p in result["paired"]])
    n_head = sum(t["group"] == "head" for t in result["tools"])
    lines += ["", "## Head and tail tools", "",
              f"Head = the most frequent training tools that together cover {result['head_coverage']:.0%} of "
              f"training tool uses ({n_head} of the {len(result['tools'])} tools seen in the test gold); tail = the "
              "rest, including tools unseen in training. Micro P/R/F1 over summed counts; macro F1 over tools "
              "with test support.", ""]
    rows = [[s, *(f"{result['groups'][s][g][k]:.3f}" for g in ("head", "tail")
                  for k in ("precision", "recall", "f1", "macro_f1"))] for s in systems]
    lines += _table(["System", "Head P", "Head R", "Head F1", "Head macro F1",
                     "Tail P", "Tail R", "Tail F1", "Tail macro F1"], rows)
    lines += ["", "## Per-tool F1 (tools in the test gold)", ""]
    rows = [[t["tool"], t["group"], t["train_count"], t["test_support"],
             *(f"{result['per_tool'][s].get(t['tool'], {}).get('f1', 0.0):.3f}" for s in systems)]
            for t in result["tools"]]
    lines += _table(["Tool", "Group", "Train", "Test", *systems], rows)
    if plot_svg:
        lines += ["", f"![Per-tool F1 by training frequency]({plot_svg})"]
    if result["lookup_exact_hits"] is not None:
        lines += ["", "## Contamination probe", "",
                  f"train_lookup found an exact normalized-prompt match in training for "
                  f"{result['lookup_exact_hits']}/{result['n']} test examples (a clean split gives ~0)."]
    lines += ["", "## Definitions", "",
              "Per example, V = valid predicted names, I = invalid names (outside the candidate list), G = gold: "
              "tp = |V&G|, fp = |V-G| + |I|, fn = |G-V|. Jaccard tp/(tp+fp+fn); precision tp/(tp+fp); recall "
              "tp/(tp+fn); exact: V = G and no invalid name; top-1: the first valid name is in G; invalid: any "
              "invalid name; empty: nothing predicted. A 0/0 ratio is 1 only when nothing was predicted and G is "
              "empty. Baselines: floor = the k most frequent training tools; train_lookup = exact, else nearest "
              "(token Jaccard) normalized training prompt; retrieval = BM25 neighbours' tool sets voted.", ""]
    return "\n".join(lines)


def plot_rows(result: Mapping) -> list[dict]:
    """DVC plot data: one row per tool with test support: frequencies and each system's F1 as columns."""
    return [{"tool": t["tool"], "train_count": t["train_count"], "test_support": t["test_support"],
             "group": t["group"],
             **{s: _round(result["per_tool"][s].get(t["tool"], {}).get("f1", 0.0)) for s in result["systems"]}}
            for t in result["tools"]]


_COLOURS = ("#1b6ca8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#444444")


def tool_f1_svg(result: Mapping, width: int = 640, height: int = 400) -> str:
    """A hand-written SVG scatter: per-tool F1 (y) against log10(1 + training count) (x), one colour per system."""
    left, right, top, bottom = 56, 130, 20, 48
    rows = plot_rows(result)
    xmax = max([math.log10(1 + r["train_count"]) for r in rows] + [1.0])

    def sx(count: float) -> float:
        return left + (width - left - right) * math.log10(1 + count) / xmax

    def sy(f1: float) -> float:
        return top + (height - top - bottom) * (1 - f1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(f):.1f}" y2="{sy(f):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{sy(f) + 4:.1f}" text-anchor="end">{f:.2f}</text>')
    for power in range(0, int(xmax) + 1):
        x = sx(10 ** power - 1)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" stroke="#eee"/>'
                     f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">{10 ** power - 1}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">training examples '
                 f'using the tool (log scale, +1)</text>')
    parts.append(f'<text transform="rotate(-90)" x="{-(top + height - bottom) / 2}" y="14" '
                 f'text-anchor="middle">per-tool F1 on test</text>')
    for i, system in enumerate(result["systems"]):
        colour = _COLOURS[i % len(_COLOURS)]
        for r in rows:
            parts.append(f'<circle cx="{sx(r["train_count"]):.1f}" cy="{sy(r[system]):.1f}" r="3.5" '
                         f'fill="{colour}" fill-opacity="0.7"><title>{_xml(r["tool"])} ({system}): '
                         f'{r[system]:.3f}</title></circle>')
        y = top + 14 * i + 6
        parts.append(f'<circle cx="{width - right + 14}" cy="{y}" r="4" fill="{colour}"/>'
                     f'<text x="{width - right + 22}" y="{y + 4}">{_xml(system)}</text>')
    return "\n".join(parts + ["</svg>", ""])


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_outputs(result: Mapping, *, metrics_path, report_path, predictions_path, plot_path,
                  svg_path=None, note: str | None = None) -> None:
    """Write every eval artifact atomically; the report links the SVG by a relative path."""
    write_json(metrics_path, eval_metrics(result))
    write_jsonl(predictions_path, result["records"])
    write_json(plot_path, plot_rows(result))
    if svg_path is not None:
        with atomic_open(svg_path, "wb") as handle:
            handle.write(tool_f1_svg(result).encode("utf-8"))
    svg_link = None
    if svg_path is not None:
        svg_link = os.path.relpath(svg_path, os.path.dirname(os.path.abspath(report_path))).replace(os.sep, "/")
    with atomic_open(report_path, "wb") as handle:
        handle.write(render_report(result, svg_link, note).encode("utf-8"))
