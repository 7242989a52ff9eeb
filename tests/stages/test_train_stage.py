"""`toolsel train`: outputs and their schemas, resume vs restart on a param change, clear errors on bad input."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from testkit import rendered_record
from toolsel.cli import app
from toolsel.io import read_jsonl, write_jsonl
from toolsel.params import load_params
from toolsel.schemas import validate

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny_model_dir):
    """Schema-valid rendered splits built with the tiny model's own chat template."""
    from toolsel.model.chat import load_tokenizer

    out = tmp_path_factory.mktemp("rendered")
    tokenizer, rng = load_tokenizer(tiny_model_dir), random.Random(0)
    for split, n in (("train", 12), ("valid", 4)):
        records = []
        for i in range(n):
            tools = rng.sample(["Bash", "Read", "Edit", "Grep"], rng.randint(1, 3))
            records.append(rendered_record(tokenizer, f"{split}-{i}", f"task {i}: fix module {rng.randint(0, 9)}",
                                           tools))
        write_jsonl(out / f"{split}.jsonl", records)
    return out


@pytest.fixture
def params(tmp_path):
    conf = load_params(REPO / "params.yaml")
    conf["train"].update(method="lora", steps=STEPS, save_every=2, val_every=2, batch_size=4, warmup_steps=1)
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(conf))
    return path


def _run(params, data, model, out, *extra):
    args = ["train", "--params", str(params), "--data", str(data), "--model", str(model),
            "--output", str(out / "adapter"), "--checkpoints", str(out / "ckpt"),
            "--metrics", str(out / "train.json"), "--log", str(out / "log.csv"), *extra]
    return CliRunner().invoke(app, args)


def test_writes_adapter_metrics_log_and_checkpoints(params, rendered, tiny_model_dir, tmp_path):
    result = _run(params, rendered, tiny_model_dir, tmp_path)
    assert result.exit_code == 0, result.output
    assert "[train] lora 4 steps" in result.output
    metrics = json.loads((tmp_path / "train.json").read_text())
    validate(metrics, "train_metrics", "train.json")
    assert metrics["steps"] == STEPS and metrics["resumed_from_step"] is None
    assert metrics["best_val_loss"] <= metrics["final_val_loss"] and metrics["tokens_per_sec"] > 0
    assert metrics["trainable_params"] > 0 and metrics["train_examples"] == 12 and metrics["valid_examples"] == 4
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["scale"] == 2.0
    assert (tmp_path / "adapter" / "adapters.safetensors").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [bool(r["val_loss"]) for r in rows] == [False, True, False, True]
    assert float(rows[-1]["val_loss"]) == pytest.approx(metrics["final_val_loss"])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000002", "step-000004"]


def test_rerun_resumes_and_a_param_change_restarts(params, rendered, tiny_model_dir, tmp_path):
    assert _run(params, rendered, tiny_model_dir, tmp_path).exit_code == 0
    first = (tmp_path / "adapter" / "adapters.safetensors").read_bytes()
    again = _run(params, rendered, tiny_model_dir, tmp_path)
    assert "resuming from step-000004" in again.output
    assert (tmp_path / "adapter" / "adapters.safetensors").read_bytes() == first
    changed = _run(params, rendered, tiny_model_dir, tmp_path, "--lr", "3e-4")
    assert changed.exit_code == 0 and "other train params, data or base model: starting fresh" in changed.output
    assert json.loads((tmp_path / "train.json").read_text())["resumed_from_step"] is None
    assert (tmp_path / "adapter" / "adapters.safetensors").read_bytes() != first


def test_full_method_writes_a_model_directory(params, rendered, tiny_model_dir, tmp_path):
    result = _run(params, rendered, tiny_model_dir, tmp_path, "--method", "full", "--steps", "1")
    assert result.exit_code == 0, result.output
    out = tmp_path / "adapter"
    assert json.loads((out / "adapter_config.json").read_text()) == {"fine_tune_type": "full"}
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "diffusion_gemma"


def test_bad_inputs_fail_with_a_clear_message(params, rendered, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    records = list(read_jsonl(rendered / "train.jsonl"))
    del records[2]["response"]
    write_jsonl(broken / "train.jsonl", records)
    (broken / "valid.jsonl").write_bytes((rendered / "valid.jsonl").read_bytes())
    result = _run(params, broken, tiny_model_dir, tmp_path)
    assert result.exit_code == 1 and "train.jsonl:3" in result.output and "response" in result.output

    result = _run(params, rendered, tmp_path / "nowhere", tmp_path)
    assert result.exit_code == 1 and "nowhere" in result.output

    conf = json.loads(params.read_text())
    conf["train"]["lerning_rate"] = 1e-3
    params.write_text(json.dumps(conf))
    result = _run(params, rendered, tiny_model_dir, tmp_path)
    assert result.exit_code == 1 and "lerning_rate" in result.output
