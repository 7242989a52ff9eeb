"""dedup: normalization, deterministic representative, counts, and the stage end to end."""

import json
import random

from typer.testing import CliRunner

from toolsel.cli import app
from toolsel.data.dedup import dedup_examples
from toolsel.data.normalize import normalize_prompt, prompt_template, tool_set_key
from toolsel.io import read_jsonl, write_jsonl
from toolsel.schemas import validate


def example(i, prompt, tools, **extra):
    return {"id": f"{i:016x}", "prompt": prompt, "tools": tools, "format": "claude_code",
            "source_file": extra.pop("source_file", "s.jsonl"), "source_line": extra.pop("source_line", i + 1),
            "session_id": extra.pop("session_id", "s1"), "project": "/p", "timestamp": None, **extra}


def test_normalize_prompt_nfkc_casefold_whitespace():
    assert normalize_prompt("  Fix\u00a0the   BUG\n\tin ｆｏｏ ") == "fix the bug in foo"
    assert normalize_prompt("Straße") == normalize_prompt("STRASSE")  # casefold, not lower()
    assert normalize_prompt("ﬁle") == "file"  # NFKC ligature
    assert normalize_prompt("a b") != normalize_prompt("ab")


def test_template_masks_paths_numbers_hashes_strings_urls():
    a = prompt_template('Fix test_3 in src/a.py, see https://x.io/i/1 and "the error" at 3f2a9c1d')
    b = prompt_template("fix test_41 in lib/b/c.py, see http://y.org and 'other text' at 0be11e5a9")
    assert a == b == "fix test_<num> in <path>, see <url> and <str> at <hash>"
    assert prompt_template("run 550e8400-e29b-41d4-a716-446655440000") == "run <hash>"
    assert prompt_template("don't touch main.py, it's fine") == "don't touch <path>, it's fine"
    assert prompt_template("add a login page") != prompt_template("add a logout page")


def test_tool_set_key_ignores_order_and_repeats():
    assert tool_set_key(["Read", "Bash"]) == tool_set_key(["Bash", "Read", "Bash"])
    assert tool_set_key(["Read"]) != tool_set_key(["read"])


def test_collapses_normalized_duplicates_with_counts():
    records = [
        example(0, "Fix the bug", ["Read", "Edit"]),
        example(1, "fix  the BUG ", ["Edit", "Read"]),       # same prompt, same tool set
        example(2, "Fix the bug", ["Read", "Bash"]),          # same prompt, other tools: kept
        example(3, "Run the tests", ["Bash"]),
        example(4, "run the tests", ["Bash"], dup_count=3),   # already a representative of 3
    ]
    kept, metrics = dedup_examples(records)
    assert [(r["id"], r["dup_count"]) for r in kept] == [
        (records[0]["id"], 2), (records[2]["id"], 1), (records[3]["id"], 4)]
    assert kept[0]["tools"] == ["Read", "Edit"]  # the representative keeps its own order
    assert metrics == {"records_in": 5, "records_out": 3, "duplicates_removed": 2, "duplicate_groups": 2,
                       "max_dup_count": 4, "examples_represented": 5 + 2, "distinct_prompts": 2,
                       "prompts_with_several_tool_sets": 1}
    validate(metrics, "dedup_metrics", "metrics")


def test_representative_does_not_depend_on_input_order():
    records = [example(i, f"Task {i % 4}", ["Read"], source_file=f"f{i % 3}.jsonl") for i in range(30)]
    first, _ = dedup_examples(records)
    for seed in range(5):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        assert dedup_examples(shuffled)[0] == first
    assert [r["source_file"] for r in first] == sorted(r["source_file"] for r in first)
    assert dedup_examples(first)[0] == first  # idempotent


def test_empty_input():
    assert dedup_examples([]) == ([], {"records_in": 0, "records_out": 0, "duplicates_removed": 0,
                                       "duplicate_groups": 0, "max_dup_count": 0, "examples_represented": 0,
                                       "distinct_prompts": 0, "prompts_with_several_tool_sets": 0})


def test_stage_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = [example(0, "Fix it", ["Read"]), example(1, "fix it", ["Read"]), example(2, "Other", ["Bash"])]
    write_jsonl("in.jsonl", records)
    args = ["dedup", "--input", "in.jsonl", "--output", "out/examples.jsonl", "--metrics", "m.json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[dedup] 3 -> 2 examples" in result.output
    out = list(read_jsonl("out/examples.jsonl"))
    assert [r["dup_count"] for r in out] == [2, 1]
    for r in out:
        validate(r, "example", "out")
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    validate(manifest, "dedup_manifest", "manifest")
    assert manifest["stage_version"] == "1" and manifest["output"]["records"] == 2
    first = (tmp_path / "out/examples.jsonl").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (tmp_path / "out/examples.jsonl").read_bytes() == first


def test_stage_rejects_invalid_input_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = example(0, "Fix it", ["Read"])
    del bad["tools"]
    write_jsonl("in.jsonl", [example(1, "ok", ["Bash"]), bad])
    result = CliRunner().invoke(app, ["dedup", "--input", "in.jsonl", "--output", "o/e.jsonl", "--metrics", "m"])
    assert result.exit_code == 1
    assert "in.jsonl:2" in result.output and "tools" in result.output
    assert not (tmp_path / "o").exists()
    (tmp_path / "params.yaml").write_text("dedup: {unicode_form: NFKC}\n")
    result = CliRunner().invoke(app, ["dedup", "--input", "in.jsonl"])
    assert result.exit_code == 1 and "params.yaml" in result.output
