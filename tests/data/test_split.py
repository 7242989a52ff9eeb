"""split: group keys, merging, hash stability, enforced zero overlap (property-tested), probe, and the stage."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from toolsel.cli import app
from toolsel.data.split import (SplitOverlapError, assert_disjoint, assign_split, contamination_probe,
                                merge_groups, overlaps, raw_group_key, split_examples)
from toolsel.io import read_jsonl, sha256_file, write_jsonl
from toolsel.schemas import validate

FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def example(i, prompt, tools=("Read",), session="s", project="/p"):
    return {"id": f"{i:016x}", "prompt": prompt, "tools": list(tools), "format": "claude_code",
            "source_file": "f.jsonl", "source_line": i + 1, "session_id": session, "project": project,
            "timestamp": None}


def by_id(splits):
    return {r["id"]: name for name, records in splits.items() for r in records}


def test_group_keys():
    r = example(0, "x", session="abc", project="/home/me/proj")
    assert raw_group_key(r, "session", "t") == "session:abc"
    assert raw_group_key(r, "project", "t") == "project:/home/me/proj"
    assert raw_group_key(r, "template", "t").startswith("template:")
    assert raw_group_key({**r, "session_id": None}, "session", "t") == raw_group_key(r, "template", "t")
    with pytest.raises(ValueError, match="unknown group key"):
        raw_group_key(r, "user", "t")


def test_template_groups_near_duplicates_of_one_workflow():
    records = [example(i, f"Fix the failing test_{i} in src/mod{i}.py", session=f"s{i}") for i in range(40)]
    records += [example(100 + i, f"Write docs for feature {i}", session=f"d{i}") for i in range(40)]
    splits, report = split_examples(records, "template", FRACTIONS, seed=0)
    assert report["groups"] == 2
    assert len({name for name, rs in splits.items() for r in rs if r["prompt"].startswith("Fix")}) == 1
    by_session, _ = split_examples(records, "session", FRACTIONS, seed=0)
    assert len({name for name, rs in by_session.items() if rs}) == 3  # per session: spread over splits


def test_merge_groups_joins_keys_sharing_a_prompt_transitively():
    keys = ["session:b", "session:a", "session:c", "session:d"]
    prompts = ["p1", "p1", "p2", "p2"]
    assert merge_groups(keys, prompts) == ["session:a", "session:a", "session:c", "session:c"]
    assert merge_groups(["k3", "k2", "k1"], ["x", "y", "x"]) == ["k1", "k2", "k1"]
    chain = merge_groups(["g5", "g4", "g4", "g3", "g3", "g1"], ["a", "a", "b", "b", "c", "c"])
    assert set(chain) == {"g1"}


def test_same_prompt_in_two_sessions_lands_in_one_split():
    records = [example(i, f"task number {i}", session=f"s{i}") for i in range(200)]
    records += [example(1000 + i, "Commit and push", session=f"s{i}") for i in range(0, 200, 20)]
    splits, report = split_examples(records, "session", FRACTIONS, seed=3)
    homes = {name for name, rs in splits.items() for r in rs if r["prompt"] == "Commit and push"}
    assert len(homes) == 1
    assert report["groups_before_merge"] == 200 and report["groups"] == 200 - 9


def test_assignment_is_stable_when_data_is_added():
    base = [example(i, f"distinct task {i}", session=f"s{i}") for i in range(300)]
    more = base + [example(1000 + i, f"new task {i}", session=f"n{i}") for i in range(300)]
    before = by_id(split_examples(base, "session", FRACTIONS, seed=7)[0])
    after = by_id(split_examples(more, "session", FRACTIONS, seed=7)[0])
    assert all(after[i] == name for i, name in before.items())
    other_seed = by_id(split_examples(base, "session", FRACTIONS, seed=8)[0])
    assert other_seed != before


def test_assign_split_follows_fractions():
    counts = {"train": 0, "valid": 0, "test": 0}
    for i in range(20000):
        counts[assign_split(f"group{i}", 0, FRACTIONS)] += 1
    assert abs(counts["train"] / 20000 - 0.8) < 0.01 and abs(counts["test"] / 20000 - 0.1) < 0.01
    assert {assign_split(f"g{i}", 0, {"train": 1.0, "valid": 0.0, "test": 0.0}) for i in range(100)} == {"train"}
    assert {assign_split(f"g{i}", 0, {"train": 0.0, "valid": 0.0, "test": 1.0}) for i in range(100)} == {"test"}


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="add up to 1"):
        split_examples([], "session", {"train": 0.8, "valid": 0.1, "test": 0.2}, 0)
    with pytest.raises(ValueError, match="train, valid and test"):
        split_examples([], "session", {"train": 1.0, "dev": 0.0, "test": 0.0}, 0)


def test_assert_disjoint_names_every_overlap():
    a, b = example(0, "Same prompt", session="x"), example(1, "same  PROMPT", session="y")
    splits = {"train": [{**a, "group": "g1"}], "valid": [], "test": [{**b, "group": "g1"}]}
    found = overlaps(splits)
    assert {k: len(v) for k, v in found["train|test"].items()} == {
        "pairs": 0, "normalized_pairs": 1, "prompts": 1, "groups": 1}
    with pytest.raises(SplitOverlapError, match="1 prompts in both train and test.*1 groups in both train and test"):
        assert_disjoint(found)
    assert_disjoint(overlaps({"train": [{**a, "group": "g1"}], "valid": [], "test": []}))


def test_contamination_probe_counts_exact_and_near_hits():
    train = [example(0, "Fix test_1 in a.py"), example(1, "Deploy the app")]
    probe = [example(2, "fix  TEST_1 in a.py"), example(3, "Fix test_9 in b.py"), example(4, "Write a poem")]
    result = contamination_probe(train, probe)
    assert result["probed"] == 3 and result["exact_hits"] == 1 and result["near_hits"] == 2
    assert result["near_hit_ids"] == sorted([probe[0]["id"], probe[1]["id"]])


# Adversarial inputs: few distinct prompts (so duplicates are everywhere), varied case/whitespace, random
# sessions and projects, the same prompt with different tool lists.
_prompt = st.sampled_from(["fix bug", "Fix  BUG", "run tests", "deploy", "fix bug 2", "write docs",
                           "Run Tests\n", "review src/a.py", "review src/b.py", "'x' y", "ﬁx bug"])
_record = st.tuples(_prompt, st.lists(st.sampled_from(["Read", "Edit", "Bash"]), min_size=1, max_size=3,
                                      unique=True),
                    st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6"])),
                    st.one_of(st.none(), st.sampled_from(["/a", "/b", "/c"])))
_fractions = st.sampled_from([FRACTIONS, {"train": 0.34, "valid": 0.33, "test": 0.33},
                              {"train": 0.5, "valid": 0.0, "test": 0.5}])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_record, max_size=40), group_key=st.sampled_from(["session", "project", "template"]),
       fractions=_fractions, seed=st.integers(0, 2**31))
def test_split_never_overlaps_whatever_the_input(rows, group_key, fractions, seed):
    records = [example(i, p, tools, session=s, project=pr) for i, (p, tools, s, pr) in enumerate(rows)]
    splits, report = split_examples(records, group_key, fractions, seed)
    assert sorted(r["id"] for rs in splits.values() for r in rs) == sorted(r["id"] for r in records)
    for kinds in overlaps(splits).values():  # recomputed independently of the report
        assert all(not shared for shared in kinds.values())
    assert all(p["exact_hits"] == 0 for p in report["contamination"].values())


def test_stage_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = [example(i, f"Task {i} about module {i % 13}", session=f"s{i % 17}") for i in range(120)]
    records[5]["prompt"] = records[80]["prompt"] = "Same prompt twice"
    write_jsonl("in.jsonl", [{**r, "dup_count": 1} for r in records])
    (tmp_path / "params.yaml").write_text(open(__file__.rsplit("/tests/", 1)[0] + "/params.yaml").read())
    args = ["split", "--input", "in.jsonl", "--output-dir", "out", "--metrics", "m.json", "--group-key", "session"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[split] train" in result.output and "overlap 0" in result.output
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    validate(manifest, "split_manifest", "manifest")
    assert manifest["params"] == {"group_key": "session", "fractions": FRACTIONS, "seed": 0}
    total = 0
    for name in ("train", "valid", "test"):
        rows = list(read_jsonl(tmp_path / f"out/{name}.jsonl"))
        total += len(rows)
        assert manifest["splits"][name]["sha256"] == sha256_file(tmp_path / f"out/{name}.jsonl")
        assert manifest["splits"][name]["examples"] == len(rows)
        for r in rows:
            validate(r, "example", name)
            assert r["group"].startswith("session:")
    assert total == 120
    metrics = json.loads((tmp_path / "m.json").read_text())
    validate(metrics, "split_metrics", "metrics")
    assert metrics["overlap_total"] == 0 and metrics["contamination"]["test_vs_train"]["exact_hits"] == 0
    before = (tmp_path / "out/train.jsonl").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (tmp_path / "out/train.jsonl").read_bytes() == before
    result = CliRunner().invoke(app, args + ["--train-fraction", "0.9"])
    assert result.exit_code == 1 and "add up to 1" in result.output
