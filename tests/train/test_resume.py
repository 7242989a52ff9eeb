"""A train stage killed with SIGKILL mid-run, then run again, ends with an uninterrupted run's adapter, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolsel.params import load_params

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY = 12, 3


def _params(tmp_path: Path) -> Path:
    params = load_params(REPO / "params.yaml")
    params["train"].update(method="lora", steps=STEPS, save_every=SAVE_EVERY, val_every=6, batch_size=4, grad_accum=2,
                           warmup_steps=2)
    params["train"]["lora"]["dropout"] = 0.1  # dropout draws from the RNG the checkpoint must restore
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))  # JSON is YAML 1.2
    return path


def _command(params: Path, data: Path, model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "toolsel.cli", "train", "--params", str(params), "--data", str(data),
            "--model", str(model), "--output", str(out / "adapter"), "--checkpoints", str(out / "checkpoints"),
            "--metrics", str(out / "train.json"), "--log", str(out / "train_log.csv")]


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, rendered_dir, tiny_model_dir):
    params = _params(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(params, rendered_dir, tiny_model_dir, straight), check=True, capture_output=True)

    proc = subprocess.Popen(_command(params, rendered_dir, tiny_model_dir, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / f"step-{2 * SAVE_EVERY:06d}" / "state.json"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed mid-run"
    assert not (killed / "adapter").exists()

    rerun = subprocess.run(_command(params, rendered_dir, tiny_model_dir, killed), check=True, capture_output=True,
                           text=True)
    assert "resuming from step-" in rerun.stderr
    resumed_from = json.loads((killed / "train.json").read_text())["resumed_from_step"]
    assert SAVE_EVERY * 2 <= resumed_from < STEPS
    for name in ("adapter/adapters.safetensors", "adapter/adapter_config.json", "train_log.csv"):
        assert (straight / name).read_bytes() == (killed / name).read_bytes(), name
