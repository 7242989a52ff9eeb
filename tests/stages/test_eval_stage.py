"""The eval stage end to end on a tiny workspace: every output written, deterministic bytes, loud failure on a
model whose outputs name no tool, and the model-system wiring (health check, fuse cross-check, seeds)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from toolsel.io import read_jsonl, sha256_file, write_json, write_jsonl
from toolsel.schemas import validate, validate_records
from testkit import padded_tokenizer

TOOLS = ["Bash", "Read", "Edit", "Grep", "Glob", "Write"]
SYSTEM = "List the tools the agent will need."
REPO = Path(__file__).resolve().parents[2]


def random_adapter(base_dir, out_dir):
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from toolsel.model.load import load_model
    from toolsel.train.lora import prepare_for_training, save_trained

    model, _ = load_model(base_dir)
    mx.random.seed(0)
    prepare_for_training(model, method="lora", rank=4, alpha=8.0)
    model.update(tree_unflatten([(k, 0.05 * mx.random.normal(v.shape))
                                 for k, v in tree_flatten(model.trainable_parameters()) if k.endswith("lora_b")]))
    save_trained(model, out_dir, base_dir)


def examples(n: int, offset: int) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        tools = [TOOLS[i % 6], TOOLS[(i * 5 + 1) % 6]] if i % 3 else [TOOLS[i % 6]]
        out.append({"id": hashlib.sha256(str(i).encode()).hexdigest()[:16],
                    "prompt": f"task {i}: fix module {i % 4} and " + "run the tests " * (i % 5),
                    "tools": list(dict.fromkeys(tools)), "format": "pairs", "source_file": "pairs.jsonl",
                    "source_line": i + 1, "session_id": None, "project": None, "timestamp": None,
                    "group": f"g{i}", "dup_count": 1})
    return out


def rendered(tokenizer, records: list[dict]) -> list[dict]:
    from toolsel.model.chat import encode_prompt, encode_response, format_response, render_prompt

    out = []
    for r in records:
        prompt, response = render_prompt(tokenizer, SYSTEM, r["prompt"]), format_response(r["tools"])
        out.append({"id": r["id"], "prompt": prompt, "response": response, "tools": r["tools"],
                    "prompt_tokens": len(encode_prompt(tokenizer, prompt)),
                    "response_tokens": len(encode_response(tokenizer, response)), "truncated": False})
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, model_tokenizer_dir):
    from toolsel.model.chat import load_tokenizer
    from toolsel.model.fuse import fuse_model
    from toolsel.model.tiny import build_tiny, tiny_config

    root = tmp_path_factory.mktemp("eval-stage")
    tokenizer_dir = padded_tokenizer(model_tokenizer_dir, root / "tokenizer")
    base = build_tiny(root / "models" / "base", tokenizer_dir, tiny_config(vocab_size=64), seed=0)
    random_adapter(base, root / "models" / "adapter")
    fuse_model(base, root / "models" / "adapter", root / "models" / "fused")
    tokenizer = load_tokenizer(base)
    splits = {"train": examples(12, 0), "test": examples(6, 100)}
    for name, records in splits.items():
        validate_records(records, "example", name)
        write_jsonl(root / "data" / "split" / f"{name}.jsonl", records)
        write_jsonl(root / "data" / "rendered" / f"{name}.jsonl", rendered(tokenizer, records))
    counts = {t: sum(t in r["tools"] for r in splits["train"]) for t in TOOLS}
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    write_json(root / "data" / "rendered" / "candidates.json",
               {"tools": ranked, "counts": counts, "in_prompt": len(ranked), "source": "train"})
    yaml = YAML(typ="safe", pure=True)
    params = yaml.load((REPO / "params.yaml").read_text())
    params["eval"].update(steps=6, bootstrap_samples=200)
    with open(root / "params.yaml", "w") as handle:
        yaml.dump(params, handle)
    return root


def run_eval(workspace, out: str, *extra: str):
    from toolsel.cli import app

    w = workspace
    args = ["eval", "--rendered", str(w / "data/rendered"), "--split", str(w / "data/split"),
            "--base", str(w / "models/base"), "--adapter", str(w / "models/adapter"),
            "--fused", str(w / "models/fused"), "--params", str(w / "params.yaml"),
            "--metrics", str(w / out / "eval.json"), "--report", str(w / out / "eval_report.md"),
            "--predictions", str(w / out / "eval_predictions.jsonl"), "--plot", str(w / out / "eval_tool_f1.json"),
            "--svg", str(w / out / "eval_tool_f1.svg"), *extra]
    return CliRunner().invoke(app, args)


def test_base_zero_shot_and_baselines_write_every_output_deterministically(workspace):
    first = run_eval(workspace, "a", "--systems", "base")
    assert first.exit_code == 0, first.output
    assert "[eval] 6 test examples; Jaccard base" in first.output
    second = run_eval(workspace, "b", "--systems", "base")
    assert second.exit_code == 0, second.output
    files = ["eval.json", "eval_report.md", "eval_predictions.jsonl", "eval_tool_f1.json", "eval_tool_f1.svg"]
    for name in files:
        assert sha256_file(workspace / "a" / name) == sha256_file(workspace / "b" / name), name
    metrics = json.loads((workspace / "a" / "eval.json").read_text())
    validate(metrics, "eval_metrics", "eval.json")
    assert set(metrics) == {"base", "floor", "train_lookup", "retrieval"}
    assert 1 <= metrics["base"]["mean_steps_per_block"] <= 6
    predictions = list(read_jsonl(workspace / "a" / "eval_predictions.jsonl"))
    validate_records(predictions, "predictions", "eval_predictions.jsonl")
    assert sum(p["system"] == "base" for p in predictions) == 6
    assert all(p["seed"] is None and isinstance(p["raw"], str) for p in predictions if p["system"] == "base")
    report = (workspace / "a" / "eval_report.md").read_text()
    assert "| base |" in report and "entropy-bound" in report and "greedy (temperature 0)" in report


def test_trained_model_that_names_no_tool_fails_loudly(workspace):
    result = run_eval(workspace, "garbage", "--systems", "fused")
    assert result.exit_code == 1
    assert "fused:" in result.output and "name no candidate tool" in result.output
    assert not (workspace / "garbage" / "eval.json").exists()


def test_model_systems_wiring_with_seeds(workspace, monkeypatch):
    """Decoding replaced by canned answers: the health check passes, the fuse cross-check is recorded, and a
    sampled run (temperature > 0) decodes once per seed and averages."""
    from toolsel.eval import run

    calls = []

    def fake_decode(model, tokenizer, ids, prompts, cfg, seeds, **kwargs):
        calls.append((list(seeds), cfg.temperature))
        out = run.SystemDecode(seconds=1.0)
        for seed in seeds:
            out.texts[seed] = [f"- {TOOLS[(i + seed) % 6]}\n- Read" for i in range(len(ids))]
            out.steps += [3] * len(ids)
        return out

    monkeypatch.setattr(run, "decode_system", fake_decode)
    params = YAML(typ="safe", pure=True).load((workspace / "params.yaml").read_text())

    def run_with(name, **eval_params):
        params["eval"].update(eval_params)
        with open(workspace / f"{name}.yaml", "w") as handle:
            YAML(typ="safe", pure=True).dump(params, handle)
        return run_eval(workspace, name, "--params", str(workspace / f"{name}.yaml"))

    result = run_with("sampled", temperature=0.7, seeds=[0, 1])
    assert result.exit_code == 0, result.output
    assert calls == [([0, 1], 0.7)] * 3
    metrics = json.loads((workspace / "sampled" / "eval.json").read_text())
    assert set(metrics) == {"fused", "adapter", "base", "floor", "train_lookup", "retrieval"}
    assert metrics["fused"]["agreement_with_adapter"] == 1.0 and metrics["fused"]["mean_steps_per_block"] == 3.0
    predictions = list(read_jsonl(workspace / "sampled" / "eval_predictions.jsonl"))
    assert sorted({p["seed"] for p in predictions if p["system"] == "fused"}) == [0, 1]
    assert "mean over seeds [0, 1]" in (workspace / "sampled" / "eval_report.md").read_text()

    # greedy decoding still draws its start canvas: several seeds are decoded and averaged at temperature 0 too
    calls.clear()
    result = run_with("greedy", temperature=0.0, seeds=[0, 1])
    assert result.exit_code == 0, result.output
    assert calls == [([0, 1], 0.0)] * 3
    assert "greedy (temperature 0), mean over seeds [0, 1]" in (workspace / "greedy" / "eval_report.md").read_text()
