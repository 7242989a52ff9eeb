"""Tool-selection metrics: per-example scores, bootstrap intervals, per-tool head/tail scores, paired tests.

Per example, with V the set of valid predicted names, I the number of invalid names and G the gold set:
tp = |V & G|, fp = |V - G| + I (an invalid name is always wrong), fn = |G - V|.
- jaccard = tp / (tp + fp + fn); precision = tp / (tp + fp); recall = tp / (tp + fn);
- exact = 1 when V == G and I == 0; top1 = 1 when the first valid predicted name is in G;
- invalid = 1 when I > 0; empty = 1 when nothing at all was predicted.
Empty sets: every ratio whose denominator is 0 scores 1 when the prediction is exactly right (nothing predicted,
nothing in gold, no invalid name) and 0 otherwise; top1 follows the same rule when nothing valid was predicted.
Aggregates are means over examples (a system answering nothing scores 0, never NaN).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

EXAMPLE_METRICS = ("jaccard", "exact", "precision", "recall", "top1", "invalid", "empty")
CONFIDENCE = 0.95


def _ratio(num: int, den: int, exactly_right: bool) -> float:
    if den == 0:
        return 1.0 if exactly_right else 0.0
    return num / den


def score_example(predicted: Sequence[str], gold: Iterable[str], n_invalid: int = 0) -> dict[str, float]:
    """Scores of one example: `predicted` are the valid names in answer order, `n_invalid` the invalid ones."""
    order = list(dict.fromkeys(predicted))
    pred, gold = set(order), set(gold)
    tp = len(pred & gold)
    fp = len(pred - gold) + n_invalid
    fn = len(gold - pred)
    right = fp == 0 and fn == 0
    top1 = (order[0] in gold) if order else (right and not gold)
    return {
        "jaccard": _ratio(tp, tp + fp + fn, right),
        "exact": float(right),
        "precision": _ratio(tp, tp + fp, right),
        "recall": _ratio(tp, tp + fn, right),
        "top1": float(top1),
        "invalid": float(n_invalid > 0),
        "empty": float(not order and n_invalid == 0),
    }


def _resample_means(values: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """[n_samples, ...] means of `values` (axis 0 = examples) over seeded resamples with replacement."""
    rng = np.random.default_rng(seed)
    n = len(values)
    width = int(np.prod(values.shape[1:], dtype=np.int64))
    rows = max(1, 4_000_000 // max(n * width, 1))  # bound memory: rows x n x width values per chunk
    chunks = []
    for start in range(0, n_samples, rows):
        idx = rng.integers(0, n, size=(min(rows, n_samples - start), n))
        chunks.append(values[idx].mean(axis=1))
    return np.concatenate(chunks, axis=0)


def _percentile_interval(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail], axis=0)
    return lo, hi


def _check_nonempty(values: np.ndarray) -> None:
    if len(values) == 0:
        raise ValueError("no examples to score (empty test set?)")


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_samples: int = 1000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile 95% interval over examples (axis 0); columns are bootstrapped with shared resamples."""
    values = np.asarray(values, dtype=np.float64)
    _check_nonempty(values)
    lo, hi = _percentile_interval(_resample_means(values, n_samples, seed))
    return values.mean(axis=0), lo, hi


def aggregate(scores: Sequence[dict[str, float]], n_samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Flat means with `<metric>_lo`/`_hi` bounds; `invalid` and `empty` become `invalid_rate`/`empty_rate`."""
    matrix = np.array([[s[m] for m in EXAMPLE_METRICS] for s in scores], dtype=np.float64)
    _check_nonempty(matrix)
    mean, lo, hi = bootstrap_ci(matrix, n_samples, seed)
    out: dict[str, float] = {"n": len(matrix)}
    for i, metric in enumerate(EXAMPLE_METRICS):
        name = metric + "_rate" if metric in ("invalid", "empty") else metric
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = float(mean[i]), float(lo[i]), float(hi[i])
    return out


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_samples: int = 1000,
                     seed: int = 0) -> dict[str, float | bool]:
    """System A minus system B on paired per-example scores: mean difference, 95% interval, two-sided
    p-value (resampled differences recentred on 0, the null of no difference) and whether the CI excludes 0."""
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    _check_nonempty(diffs)
    diff = diffs.mean()
    resampled = _resample_means(diffs, n_samples, seed)
    lo, hi = _percentile_interval(resampled)
    extreme = np.abs(resampled - diff) >= abs(diff) - 1e-12
    p_value = (1 + int(extreme.sum())) / (n_samples + 1)
    return {"diff": float(diff), "lo": float(lo), "hi": float(hi), "p_value": float(p_value),
            "significant": bool(lo > 0 or hi < 0)}


def tool_frequencies(tool_lists: Iterable[Iterable[str]]) -> list[tuple[str, int]]:
    """(tool, number of examples using it), most frequent first, ties by name."""
    counts = Counter(tool for tools in tool_lists for tool in set(tools))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def head_tools(frequencies: Sequence[tuple[str, int]], coverage: float = 0.8) -> set[str]:
    """The most frequent tools whose counts together first reach `coverage` of all tool occurrences
    (the tool crossing the line is head); the rest, and tools unseen in train, are tail."""
    total = sum(count for _, count in frequencies)
    head, running = set(), 0
    for tool, count in frequencies:
        if total == 0 or running >= coverage * total:
            break
        head.add(tool)
        running += count
    return head


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def per_tool_scores(predicted: Sequence[Sequence[str]], gold: Sequence[Iterable[str]],
                    weights: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """tp/fp/fn, precision, recall, F1 and gold support per tool (valid predictions only; `weights`
    average several seeds' predictions of one example). A tool never predicted nor gold is absent."""
    weights = weights if weights is not None else [1.0] * len(predicted)
    counts: dict[str, list[float]] = {}
    for pred, gold_tools, w in zip(predicted, gold, weights, strict=True):
        pred, gold_tools = set(pred), set(gold_tools)
        for tool in pred | gold_tools:
            row = counts.setdefault(tool, [0.0, 0.0, 0.0])
            row[0 if tool in pred and tool in gold_tools else 1 if tool in pred else 2] += w
    out = {}
    for tool, (tp, fp, fn) in sorted(counts.items()):
        precision, recall, f1 = _prf(tp, fp, fn)
        out[tool] = {"tp": tp, "fp": fp, "fn": fn, "support": tp + fn,
                     "precision": precision, "recall": recall, "f1": f1}
    return out


def group_scores(per_tool: dict[str, dict[str, float]], head: set[str]) -> dict[str, dict[str, float]]:
    """Micro precision/recall/F1 (summed counts) and macro F1 (mean over tools with gold support) of
    the head and the tail tools."""
    out = {}
    for group in ("head", "tail"):
        rows = [r for tool, r in per_tool.items() if (tool in head) == (group == "head")]
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        precision, recall, f1 = _prf(tp, fp, fn)
        supported = [r["f1"] for r in rows if r["support"] > 0]
        out[group] = {"precision": precision, "recall": recall, "f1": f1,
                      "macro_f1": float(np.mean(supported)) if supported else 0.0,
                      "tools": len(supported)}
    return out
