"""Cheap baselines on the model's exact split, parser and metrics: the bar the model has to clear.

- `floor`: the k most frequent training tools, most frequent first, for every example (no knowledge of the true
  count). Frequency = number of training examples using the tool; ties by name.
- `train_lookup`: a training example with the same normalized prompt -> its tools (several: the commonest tool
  list, then the earliest); otherwise the training prompt with the highest token-set Jaccard; no shared token
  -> the floor. Exact hits on a clean split should be ~0: it doubles as a contamination probe (`detail`).
- `retrieval`: Okapi BM25 (k1 1.5, b 0.75) over normalized training task texts; the top `retrieval_k`
  neighbours vote and a tool is predicted when at least `vote_fraction` of them use it, ordered by votes, then by
  the best neighbour's rank and its order of use. No tool passes -> the top neighbour's tools; no
  neighbour shares a term -> the floor.
Prompts are compared as `toolsel.data.normalize.normalize_prompt` text split into `\\w+` tokens.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np

from toolsel.data.normalize import normalize_prompt
from toolsel.eval.metrics import tool_frequencies
from toolsel.eval.parse import classify_names

BASELINES = ("floor", "train_lookup", "retrieval")
_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize_prompt(text))


class InvertedIndex:
    """Postings (doc ids, term counts) per token; a query's scores come from one bincount, not a Python loop."""

    def __init__(self, docs: Sequence[Sequence[str]]):
        self.n_docs = len(docs)
        self.doc_len = np.array([len(d) for d in docs], dtype=np.float64)
        self.doc_unique = np.array([len(set(d)) for d in docs], dtype=np.float64)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for doc_id, doc in enumerate(docs):
            for token, count in Counter(doc).items():
                ids, tfs = postings.setdefault(token, ([], []))
                ids.append(doc_id)
                tfs.append(count)
        self.postings = {t: (np.array(ids, dtype=np.int64), np.array(tfs, dtype=np.float64))
                         for t, (ids, tfs) in postings.items()}

    def accumulate(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """Sum over query tokens of weights[token] (one value per posting) into one score per document."""
        if not weights:
            return np.zeros(self.n_docs)
        ids = np.concatenate([self.postings[t][0] for t in weights])
        return np.bincount(ids, np.concatenate(list(weights.values())), minlength=self.n_docs)

    def overlap(self, tokens: set[str]) -> np.ndarray:
        """How many of `tokens` each document contains."""
        ids = [self.postings[t][0] for t in tokens if t in self.postings]
        if not ids:
            return np.zeros(self.n_docs)
        return np.bincount(np.concatenate(ids), minlength=self.n_docs).astype(np.float64)


class BM25:
    """Okapi BM25 with the non-negative idf log(1 + (N - df + 0.5) / (df + 0.5))."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75):
        self.index = InvertedIndex(docs)
        avg_len = self.index.doc_len.mean() if self.index.n_docs else 0.0
        norm = k1 * (1 - b + b * self.index.doc_len / max(avg_len, 1e-9))
        self.term_weight = {}
        for token, (ids, tfs) in self.index.postings.items():
            idf = math.log(1 + (self.index.n_docs - len(ids) + 0.5) / (len(ids) + 0.5))
            self.term_weight[token] = idf * tfs * (k1 + 1) / (tfs + norm[ids])

    def scores(self, query: Sequence[str]) -> np.ndarray:
        counts = Counter(t for t in query if t in self.term_weight)
        return self.index.accumulate({t: self.term_weight[t] * c for t, c in counts.items()})


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best positive scores, best first, ties to the earlier document."""
    if k < len(scores):
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        pool = np.flatnonzero(scores >= kth)  # every tie of the k-th score, so the earliest ones win
    else:
        pool = np.arange(len(scores))
    order = pool[np.lexsort((pool, -scores[pool]))][:k]
    return [int(i) for i in order if scores[i] > 0]


def floor_tools(train_tools: Sequence[Sequence[str]], k: int) -> list[str]:
    return [tool for tool, _ in tool_frequencies(train_tools)[:k]]


def _commonest_tools(rows: Sequence[int], train_tools: Sequence[Sequence[str]]) -> list[str]:
    counts = Counter(tuple(train_tools[i]) for i in rows)
    best = max(counts.values())
    return list(next(tuple(train_tools[i]) for i in rows if counts[tuple(train_tools[i])] == best))


def train_lookup(train_prompts: Sequence[str], train_tools: Sequence[Sequence[str]],
                 test_prompts: Sequence[str], fallback: list[str]) -> list[tuple[list[str], str]]:
    """(tools, how) per test prompt; how is `exact`, `nearest` or `fallback`."""
    exact: dict[str, list[int]] = {}
    for i, prompt in enumerate(train_prompts):
        exact.setdefault(normalize_prompt(prompt), []).append(i)
    docs = [tokenize(p) for p in train_prompts]
    index = InvertedIndex(docs)
    out = []
    for prompt in test_prompts:
        rows = exact.get(normalize_prompt(prompt))
        if rows:
            out.append((_commonest_tools(rows, train_tools), "exact"))
            continue
        query = set(tokenize(prompt))
        overlap = index.overlap(query)
        union = len(query) + index.doc_unique - overlap
        similarity = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        best = _top(similarity, 1)
        out.append((list(train_tools[best[0]]), "nearest") if best else (list(fallback), "fallback"))
    return out


def retrieval(train_prompts: Sequence[str], train_tools: Sequence[Sequence[str]], test_prompts: Sequence[str],
              fallback: list[str], k: int = 5, vote_fraction: float = 0.5) -> list[tuple[list[str], str]]:
    """(tools, how) per test prompt from BM25 neighbours' votes; how is `vote`, `top1` or `fallback`."""
    bm25 = BM25([tokenize(p) for p in train_prompts])
    out = []
    for prompt in test_prompts:
        neighbours = _top(bm25.scores(tokenize(prompt)), k)
        if not neighbours:
            out.append((list(fallback), "fallback"))
            continue
        votes: Counter[str] = Counter()
        first_seen: dict[str, tuple[int, int]] = {}
        for rank, row in enumerate(neighbours):
            for pos, tool in enumerate(dict.fromkeys(train_tools[row])):
                votes[tool] += 1
                first_seen.setdefault(tool, (rank, pos))
        needed = vote_fraction * len(neighbours)
        chosen = sorted((t for t, v in votes.items() if v >= needed), key=lambda t: (-votes[t], first_seen[t]))
        out.append((chosen, "vote") if chosen else (list(train_tools[neighbours[0]]), "top1"))
    return out


def prediction(example_id: str, names: Sequence[str], candidates: Sequence[str], detail: str | None = None,
               raw: str | None = None) -> dict:
    """One prediction record (shared with the model systems): names pass the parser's candidate check."""
    parsed = classify_names(names, candidates)
    return {"id": example_id, "predicted": parsed.valid, "invalid": parsed.invalid, "raw": raw,
            "detail": detail, "seed": None}


def run_baselines(train_records: Sequence[Mapping], test_records: Sequence[Mapping], candidates: Sequence[str], *,
                  k: int = 3, retrieval_k: int = 5, vote_fraction: float = 0.5,
                  systems: Sequence[str] = BASELINES,
                  progress: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
    """Predictions of each baseline for `test_records`, in their order. Records need `id`, `prompt` (the
    raw task text, not the rendered chat prompt) and, for train, `tools`."""
    if not train_records:
        raise ValueError("baselines need at least one training example")
    train_prompts = [r["prompt"] for r in train_records]
    train_tools = [list(r["tools"]) for r in train_records]
    test_prompts = [r["prompt"] for r in test_records]
    ids = [r["id"] for r in test_records]
    floor = floor_tools(train_tools, k)
    runs = {
        "floor": lambda: [(floor, None)] * len(ids),
        "train_lookup": lambda: train_lookup(train_prompts, train_tools, test_prompts, floor),
        "retrieval": lambda: retrieval(train_prompts, train_tools, test_prompts, floor, retrieval_k, vote_fraction),
    }
    out = {}
    for name in systems:
        if progress:
            progress(name)
        out[name] = [prediction(i, tools, candidates, how) for i, (tools, how) in zip(ids, runs[name]())]
    return out


def task_records(rendered: Sequence[Mapping], split: Sequence[Mapping]) -> list[dict]:
    """The rendered examples (the model's exact test/train set, in order) with the raw task text from the
    split records joined by `id`; a rendered id missing from the split is an error."""
    by_id = {r["id"]: r for r in split}
    missing = [r["id"] for r in rendered if r["id"] not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} rendered ids are not in the split records (first: {missing[0]})")
    return [{"id": r["id"], "prompt": by_id[r["id"]]["prompt"], "tools": list(r["tools"])} for r in rendered]
