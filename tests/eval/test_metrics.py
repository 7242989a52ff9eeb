import numpy as np
import pytest

from toolsel.eval.metrics import (
    aggregate,
    bootstrap_ci,
    group_scores,
    head_tools,
    paired_bootstrap,
    per_tool_scores,
    score_example,
    tool_frequencies,
)


def test_hand_computed_example():
    # tp = {Bash}, fp = {Read, Edit}, fn = {Grep}
    s = score_example(["Bash", "Read", "Edit"], ["Bash", "Grep"])
    assert s == pytest.approx({"jaccard": 1 / 4, "exact": 0, "precision": 1 / 3, "recall": 1 / 2,
                               "top1": 1, "invalid": 0, "empty": 0})


def test_top1_is_the_first_prediction_only():
    assert score_example(["Read", "Bash"], ["Bash"])["top1"] == 0
    assert score_example(["Bash", "Read"], ["Bash"])["top1"] == 1


def test_order_and_duplicates_do_not_change_set_metrics():
    a = score_example(["Read", "Bash", "Read"], ["Bash", "Read"])
    assert (a["jaccard"], a["exact"], a["precision"], a["recall"]) == (1, 1, 1, 1)


def test_invalid_names_are_false_positives():
    s = score_example(["Bash"], ["Bash"], n_invalid=1)
    assert s == pytest.approx({"jaccard": 1 / 2, "exact": 0, "precision": 1 / 2, "recall": 1,
                               "top1": 1, "invalid": 1, "empty": 0})


@pytest.mark.parametrize("pred,gold,n_invalid,expected", [
    # nothing predicted, nothing needed: exactly right
    ([], [], 0, dict(jaccard=1, exact=1, precision=1, recall=1, top1=1, invalid=0, empty=1)),
    # nothing predicted, tools needed: 0/0 precision counts as 0 (silence is never rewarded)
    ([], ["Bash"], 0, dict(jaccard=0, exact=0, precision=0, recall=0, top1=0, invalid=0, empty=1)),
    # tools predicted, none needed: 0/0 recall counts as 0
    (["Bash"], [], 0, dict(jaccard=0, exact=0, precision=0, recall=0, top1=0, invalid=0, empty=0)),
    # only invalid names, none needed
    ([], [], 2, dict(jaccard=0, exact=0, precision=0, recall=0, top1=0, invalid=1, empty=0)),
    # only invalid names, tools needed
    ([], ["Bash"], 1, dict(jaccard=0, exact=0, precision=0, recall=0, top1=0, invalid=1, empty=0)),
])
def test_empty_set_edge_cases(pred, gold, n_invalid, expected):
    assert score_example(pred, gold, n_invalid) == pytest.approx(expected)


def test_aggregate_means_and_ci_contain_point_estimate():
    rng = np.random.default_rng(1)
    scores = [score_example(list(rng.choice(["A", "B", "C"], size=rng.integers(0, 3), replace=False)),
                            ["A", "B"]) for _ in range(200)]
    agg = aggregate(scores, n_samples=500, seed=0)
    assert agg["n"] == 200
    assert agg["jaccard"] == pytest.approx(np.mean([s["jaccard"] for s in scores]))
    for name in ("jaccard", "exact", "precision", "recall", "top1", "invalid_rate", "empty_rate"):
        assert agg[f"{name}_lo"] <= agg[name] <= agg[f"{name}_hi"]
    assert agg["jaccard_lo"] < agg["jaccard_hi"]


def test_bootstrap_is_seeded_and_has_the_right_width():
    values = np.array([0, 1] * 200, dtype=float)  # mean 0.5, sd 0.5, n 400: 95% half-width ~0.049
    _, lo, hi = bootstrap_ci(values, n_samples=2000, seed=3)
    assert (lo, hi) == tuple(bootstrap_ci(values, n_samples=2000, seed=3)[1:])
    assert 0.08 < hi - lo < 0.12
    assert bootstrap_ci(values, n_samples=2000, seed=4)[1] != lo or bootstrap_ci(values, 2000, 4)[2] != hi
    mean, lo, hi = bootstrap_ci(np.full(50, 0.25), n_samples=100, seed=0)
    assert mean == lo == hi == 0.25


def test_empty_input_is_an_error_not_nan():
    with pytest.raises(ValueError, match="no examples"):
        aggregate([], n_samples=10)


def test_paired_bootstrap_detects_a_real_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 0.8, size=300)
    a = np.clip(b + 0.1 + rng.normal(0, 0.1, size=300), 0, 1)
    out = paired_bootstrap(a, b, n_samples=1000, seed=0)
    assert out["diff"] == pytest.approx(np.mean(a - b))
    assert out["significant"] and out["lo"] > 0 and out["p_value"] < 0.01


def test_paired_bootstrap_does_not_flag_a_null_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.2, 0.8, size=200)
    swing = rng.uniform(0, 0.2, size=100)
    a = b + np.concatenate([swing, -swing])  # differences symmetric around exactly 0
    out = paired_bootstrap(a, b, n_samples=1000, seed=0)
    assert out["diff"] == pytest.approx(0, abs=1e-12)
    assert not out["significant"] and out["lo"] < 0 < out["hi"] and out["p_value"] > 0.5
    same = paired_bootstrap(b, b, n_samples=200, seed=0)
    assert (same["diff"], same["lo"], same["hi"], same["p_value"], same["significant"]) == (0, 0, 0, 1, False)


def test_pairing_matters():
    # Two systems with very different per-example scores but a tiny, consistent edge: paired test sees it.
    base = np.linspace(0, 0.9, 100)
    out = paired_bootstrap(base + 0.02, base, n_samples=500, seed=0)
    assert out["significant"] and out["lo"] == pytest.approx(0.02) and out["hi"] == pytest.approx(0.02)


def test_tool_frequencies_count_examples_and_break_ties_by_name():
    assert tool_frequencies([["B", "A", "B"], ["A"], ["C"], ["B"]]) == [("A", 2), ("B", 2), ("C", 1)]


def test_head_tools_cover_the_requested_share():
    freq = [("A", 50), ("B", 30), ("C", 10), ("D", 10)]
    assert head_tools(freq, 0.8) == {"A", "B"}  # 50 + 30 = 80% reached with B
    assert head_tools(freq, 0.81) == {"A", "B", "C"}
    assert head_tools(freq, 0.5) == {"A"}
    assert head_tools([], 0.8) == set()


def test_per_tool_and_group_scores_by_hand():
    pred = [["A", "B"], ["A"], ["C"]]
    gold = [["A"], ["A", "C"], ["B"]]
    per = per_tool_scores(pred, gold)
    assert per["A"] == pytest.approx(dict(tp=2, fp=0, fn=0, support=2, precision=1, recall=1, f1=1))
    assert per["B"] == pytest.approx(dict(tp=0, fp=1, fn=1, support=1, precision=0, recall=0, f1=0))
    assert per["C"] == pytest.approx(dict(tp=0, fp=1, fn=1, support=1, precision=0, recall=0, f1=0))
    groups = group_scores(per, head={"A"})
    assert groups["head"] == pytest.approx(dict(precision=1, recall=1, f1=1, macro_f1=1, tools=1))
    assert groups["tail"] == pytest.approx(dict(precision=0, recall=0, f1=0, macro_f1=0, tools=2))
    weighted = per_tool_scores([["A"], ["B"]], [["A"], ["A"]], weights=[0.5, 0.5])
    assert weighted["A"]["tp"] == 0.5 and weighted["A"]["fn"] == 0.5 and weighted["A"]["recall"] == 0.5
