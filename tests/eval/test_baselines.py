import math
import random
import time

import numpy as np
import pytest

from toolsel.eval.baselines import (
    BM25,
    _top,
    floor_tools,
    retrieval,
    run_baselines,
    task_records,
    tokenize,
    train_lookup,
)

TRAIN = [
    {"id": "t1", "prompt": "Fix the failing unit test in parser", "tools": ["Read", "Edit", "Bash"]},
    {"id": "t2", "prompt": "Run the test suite and report", "tools": ["Bash"]},
    {"id": "t3", "prompt": "Search the codebase for TODO comments", "tools": ["Grep", "Read"]},
    {"id": "t4", "prompt": "Write a README for the project", "tools": ["Write"]},
    {"id": "t5", "prompt": "Refactor parser module for speed", "tools": ["Read", "Edit"]},
]
CANDIDATES = ["Read", "Bash", "Edit", "Grep", "Write"]


def test_floor_is_the_k_most_frequent_training_tools():
    tools = [r["tools"] for r in TRAIN]
    assert floor_tools(tools, 3) == ["Read", "Bash", "Edit"]  # Read 3, then Bash 2 and Edit 2 by name
    assert floor_tools(tools, 1) == ["Read"]
    assert floor_tools(tools, 10) == ["Read", "Bash", "Edit", "Grep", "Write"]


def test_train_lookup_exact_nearest_and_fallback():
    prompts = [r["prompt"] for r in TRAIN]
    tools = [r["tools"] for r in TRAIN]
    out = train_lookup(prompts, tools, ["  run THE test   suite and report", "search codebase TODO", "zzz qqq"],
                       fallback=["Read"])
    assert out == [(["Bash"], "exact"), (["Grep", "Read"], "nearest"), (["Read"], "fallback")]


def test_train_lookup_exact_duplicates_take_the_commonest_tool_list():
    prompts = ["same task", "same task", "same task", "other"]
    tools = [["Bash"], ["Read"], ["Read"], ["Edit"]]
    assert train_lookup(prompts, tools, ["Same  Task"], fallback=[]) == [(["Read"], "exact")]


def reference_bm25(docs, query, k1=1.5, b=0.75):
    n, avg = len(docs), sum(len(d) for d in docs) / len(docs)
    scores = []
    for doc in docs:
        score = 0.0
        for term in query:
            df = sum(term in d for d in docs)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = doc.count(term)
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg))
        scores.append(score)
    return np.array(scores)


def test_bm25_matches_the_textbook_formula():
    docs = [tokenize(r["prompt"]) for r in TRAIN] + [tokenize("test test parser parser parser")]
    bm25 = BM25(docs)
    for query in (["test", "parser"], ["the", "readme", "nothing"], ["test", "test"], []):
        np.testing.assert_allclose(bm25.scores(query), reference_bm25(docs, query), rtol=1e-12)


def test_top_k_keeps_the_best_positive_scores_and_breaks_ties_to_the_earlier_doc():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scores = rng.integers(0, 4, size=rng.integers(1, 30)).astype(float)
        k = int(rng.integers(1, 8))
        expected = [int(i) for i in np.argsort(-scores, kind="stable")[:k] if scores[i] > 0]
        assert _top(scores, k) == expected


def test_retrieval_votes_with_threshold_and_order():
    prompts = ["alpha beta", "alpha gamma", "alpha delta", "alpha epsilon", "alpha zeta", "omega"]
    tools = [["Read", "Bash"], ["Bash", "Read"], ["Bash"], ["Edit", "Bash"], ["Grep"], ["Write"]]
    # Query hits the 5 alpha docs: Bash 4 votes, Read 2, Edit 1, Grep 1; threshold 2.5 -> Bash only.
    assert retrieval(prompts, tools, ["alpha"], fallback=[], k=5, vote_fraction=0.5) == [(["Bash"], "vote")]
    # Threshold 0.4 * 5 = 2: Bash (4) then Read (2).
    assert retrieval(prompts, tools, ["alpha"], fallback=[], k=5, vote_fraction=0.4) == [(["Bash", "Read"], "vote")]
    # Only one neighbour shares a term: it alone votes.
    assert retrieval(prompts, tools, ["omega"], fallback=[], k=5) == [(["Write"], "vote")]
    assert retrieval(prompts, tools, ["nothing"], fallback=["Read"], k=5) == [(["Read"], "fallback")]


def test_retrieval_falls_back_to_top_neighbour_when_no_tool_passes():
    prompts = ["alpha one", "alpha two", "alpha three"]
    tools = [["Read"], ["Bash"], ["Edit"]]
    out = retrieval(prompts, tools, ["alpha one"], fallback=[], k=3, vote_fraction=0.5)
    assert out == [(["Read"], "top1")]


def test_run_baselines_shapes_and_candidate_check():
    test = [{"id": "x1", "prompt": "run the test suite and report", "tools": ["Bash"]},
            {"id": "x2", "prompt": "write docs for the project", "tools": ["Write"]}]
    out = run_baselines(TRAIN, test, CANDIDATES, k=2)
    assert set(out) == {"floor", "train_lookup", "retrieval"}
    for preds in out.values():
        assert [p["id"] for p in preds] == ["x1", "x2"]
    assert out["floor"][0]["predicted"] == ["Read", "Bash"]
    assert out["train_lookup"][0]["detail"] == "exact" and out["train_lookup"][0]["predicted"] == ["Bash"]
    # A training tool missing from the candidate list is an invalid prediction, exactly as for a model.
    out = run_baselines(TRAIN, test, ["Read", "Bash"], k=3, systems=["floor"])
    assert out["floor"][0]["predicted"] == ["Read", "Bash"] and out["floor"][0]["invalid"] == ["Edit"]


def test_task_records_join_keeps_rendered_order_and_checks_ids():
    split = [{"id": "a", "prompt": "raw a", "tools": ["Bash"]}, {"id": "b", "prompt": "raw b", "tools": ["Read"]}]
    rendered = [{"id": "b", "prompt": "<|turn>...", "tools": ["Read"]}]
    assert task_records(rendered, split) == [{"id": "b", "prompt": "raw b", "tools": ["Read"]}]
    with pytest.raises(ValueError, match="not in the split"):
        task_records([{"id": "zz", "prompt": "", "tools": []}], split)


def test_thousands_of_examples_are_fast():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)] + ["the", "a", "file", "test", "fix"] * 50
    tools = ["Bash", "Read", "Edit", "Grep", "Write", "Glob", "TodoWrite", "Task"]

    def record(i):
        return {"id": str(i), "prompt": " ".join(rng.choices(words, k=rng.randint(5, 60))),
                "tools": rng.sample(tools, rng.randint(1, 4))}

    train = [record(i) for i in range(4000)]
    test = [record(i) for i in range(4000, 5000)]
    start = time.perf_counter()
    out = run_baselines(train, test, tools, k=3)
    elapsed = time.perf_counter() - start
    assert all(len(v) == 1000 for v in out.values())
    assert elapsed < 30, f"baselines took {elapsed:.1f}s for 4000 train x 1000 test"
