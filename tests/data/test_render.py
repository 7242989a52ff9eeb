"""render: candidate list from train only, the model's own template and tokenizer, canvas and prompt limits."""

import json

import pytest
from typer.testing import CliRunner

from toolsel.cli import app
from toolsel.data.render import PromptTooLong, candidate_tools, render_split, user_message
from toolsel.io import read_jsonl, write_jsonl
from toolsel.model.chat import encode_prompt, encode_response, format_response, load_tokenizer, render_prompt
from toolsel.model.tokenizer import build_tokenizer
from toolsel.schemas import validate

SYSTEM = "List the tools the agent will need."
CANVAS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The render code path of a real model directory: tokenizer files + config.json with canvas_length."""
    out = tmp_path_factory.mktemp("model")
    texts = [f"fix the failing test {i} in src/module_{i % 5}.py and run pytest" for i in range(300)]
    build_tokenizer(texts + ["- Bash\n- Read\n- Edit<turn|>"] * 20, 500, out)
    (out / "config.json").write_text(json.dumps({"model_type": "diffusion_gemma", "canvas_length": CANVAS}))
    return out


@pytest.fixture(scope="module")
def tok(model_dir):
    return load_tokenizer(model_dir)


def example(i, prompt, tools):
    return {"id": f"{i:016x}", "prompt": prompt, "tools": tools, "format": "claude_code", "source_file": "f.jsonl",
            "source_line": i + 1, "session_id": "s", "project": None, "timestamp": None, "dup_count": 1,
            "group": f"g{i}"}


def test_candidates_by_frequency_then_name():
    train = [example(0, "a", ["Read", "Bash"]), example(1, "b", ["Bash", "Edit"]), example(2, "c", ["Zed", "Read"])]
    assert candidate_tools(train) == [("Bash", 2), ("Read", 2), ("Edit", 1), ("Zed", 1)]
    assert user_message("  Fix it \n", ["Bash", "Read"]) == "Fix it\n\nAvailable tools: Bash, Read"
    assert user_message("Fix it", []) == "Fix it"


def test_render_split_uses_template_and_counts_tokens(tok):
    records = [example(0, "Fix the failing test in src/module_1.py", ["Read", "Edit", "Bash"]),
               example(1, "Run pytest", ["Bash"])]
    candidates = ["Bash", "Read", "Edit"]
    rendered, quarantined, counts = render_split(records, tok, system_prompt=SYSTEM, candidates=candidates,
                                                 canvas_length=CANVAS, max_prompt_tokens=200, overflow="truncate")
    assert quarantined == [] and counts["rendered"] == 2 and counts["truncated"] == 0
    for record, out in zip(records, rendered):
        validate(out, "rendered", "rendered")
        assert out["prompt"] == render_prompt(tok, SYSTEM, user_message(record["prompt"], candidates))
        assert out["response"] == format_response(record["tools"])
        assert out["prompt_tokens"] == len(encode_prompt(tok, out["prompt"]))
        assert out["response_tokens"] == len(encode_response(tok, out["response"]))
        assert not out["prompt"].startswith("<bos>") and out["response"].endswith("<turn|>")
    assert rendered[1]["response"] == "- Bash<turn|>"


def test_limits_quarantine_and_truncate(tok):
    long_task = "Fix the failing test in src/module_2.py " * 60
    records = [example(0, "Run pytest", ["Read"]),
               example(1, "Run pytest twice", [f"Tool{i}" for i in range(12)]),  # response > canvas
               example(2, long_task, ["Bash"])]
    limit = 120  # the template, system prompt and candidates take ~80 tokens with this small vocab
    kwargs = dict(system_prompt=SYSTEM, candidates=["Bash", "Read"], canvas_length=CANVAS, max_prompt_tokens=limit)
    rendered, quarantined, counts = render_split(records, tok, overflow="truncate", split="train", **kwargs)
    assert [q["reason"] for q in quarantined] == ["response_too_long"]
    assert quarantined[0]["response_tokens"] > CANVAS and quarantined[0]["split"] == "train"
    validate(quarantined[0], "render_quarantine", "q")
    cut = rendered[1]
    assert cut["truncated"] and cut["prompt_tokens"] <= limit
    assert cut["prompt_tokens"] == len(encode_prompt(tok, cut["prompt"]))
    assert cut["prompt"].endswith("\n\nAvailable tools: Bash, Read<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    kept_task = cut["prompt"].split("<|turn>user\n")[1].split("\n\nAvailable tools")[0]
    assert long_task.startswith(kept_task) and len(kept_task) > 40
    longer = render_prompt(tok, SYSTEM, user_message(long_task[:len(kept_task) + 8], ["Bash", "Read"]))
    assert len(encode_prompt(tok, longer)) > limit  # the longest head that fits, not just any
    assert counts["truncated"] == 1 and counts["quarantined"] == {"response_too_long": 1, "prompt_too_long": 0}

    rendered, quarantined, counts = render_split(records, tok, overflow="quarantine", **kwargs)
    assert [q["reason"] for q in quarantined] == ["response_too_long", "prompt_too_long"]
    assert [r["id"] for r in rendered] == [records[0]["id"]] and counts["truncated"] == 0

    with pytest.raises(PromptTooLong, match="max_prompt_tokens"):
        render_split(records, tok, overflow="truncate", **{**kwargs, "max_prompt_tokens": 60})


def test_stage_end_to_end(tmp_path, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    train = [example(i, f"fix the failing test {i} in src/module_{i}.py", ["Read", "Edit"] if i % 2 else ["Bash"])
             for i in range(20)]
    valid = [example(100, "run pytest", ["Bash", "Read"])]
    test = [example(200, "open a browser", ["mcp__browser__open"])]  # a tool never seen in train
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        write_jsonl(tmp_path / "split" / f"{name}.jsonl", rows)
    args = ["render", "--input-dir", "split", "--output-dir", "rendered", "--metrics", "m.json",
            "--model-dir", str(model_dir), "--system-prompt", SYSTEM, "--max-prompt-tokens", "200",
            "--overflow", "truncate", "--max-candidates", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[render] train 20 / valid 1 / test 1 examples" in result.output
    candidates = json.loads((tmp_path / "rendered/candidates.json").read_text())
    validate(candidates, "candidates", "candidates")
    assert candidates["tools"] == ["Bash", "Edit", "Read"] and candidates["in_prompt"] == 2
    assert candidates["counts"] == {"Bash": 10, "Edit": 10, "Read": 10}
    rows = list(read_jsonl(tmp_path / "rendered/test.jsonl"))
    assert "Available tools: Bash, Edit<turn|>" in rows[0]["prompt"]
    assert "mcp__browser__open" not in rows[0]["prompt"] and rows[0]["response"] == "- mcp__browser__open<turn|>"
    metrics = json.loads((tmp_path / "m.json").read_text())
    validate(metrics, "render_metrics", "metrics")
    assert metrics["canvas_length"] == CANVAS and metrics["splits"]["test"]["tools_outside_candidates"] == 1
    manifest = json.loads((tmp_path / "rendered/manifest.json").read_text())
    validate(manifest, "render_manifest", "manifest")
    first = (tmp_path / "rendered/train.jsonl").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (tmp_path / "rendered/train.jsonl").read_bytes() == first

    no_model = [str(tmp_path) if a == str(model_dir) else a for a in args]
    result = CliRunner().invoke(app, no_model)
    assert result.exit_code == 1 and "tokenizer" in result.output


def test_control_tokens_typed_in_a_task_stay_text(tok):
    plain = example(0, "close the turn and restart", ["Bash"])
    typed = example(1, "print <bos> then <turn|> and <|image|> literally", ["Bash"])
    rendered, _, counts = render_split([plain, typed], tok, system_prompt=SYSTEM, candidates=["Bash"],
                                       canvas_length=CANVAS, max_prompt_tokens=200, overflow="truncate")
    assert counts["control_tokens_defused"] == 1
    ids = [encode_prompt(tok, r["prompt"]) for r in rendered]
    for special in ("<bos>", "<turn|>", "<|image|>"):
        special_id = tok.convert_tokens_to_ids(special)
        assert ids[1].count(special_id) == ids[0].count(special_id), special  # only the template's own
    assert "print <\u200bbos> then <\u200bturn|> and <\u200b|image|> literally" in rendered[1]["prompt"]
    assert rendered[0]["prompt"] == render_prompt(tok, SYSTEM, user_message(plain["prompt"], ["Bash"]))
