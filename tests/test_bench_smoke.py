"""bench/data_stages.py: its corpus generator writes valid Claude Code sessions, and the bench runs end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("data_stages", ROOT / "bench" / "data_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_generated_corpus_is_valid_claude_code(tmp_path):
    n_files, size = bench.generate(tmp_path, 3000, workers=1)
    assert n_files >= 1 and size > 0
    typed, lines, tool_ids, result_ids = [], 0, set(), set()
    for path in tmp_path.rglob("*.jsonl"):
        assert path.parent.name.startswith("-home-dev-src-project-")
        for raw in path.read_bytes().splitlines():
            rec = json.loads(raw)
            lines += 1
            assert rec["sessionId"] and rec["timestamp"].endswith("Z")
            if rec["type"] == "user" and isinstance(rec["message"]["content"], str):
                typed.append(rec["message"]["content"])
            elif rec["type"] == "assistant":
                tool_ids.update(b["id"] for b in rec["message"]["content"] if b["type"] == "tool_use")
            elif rec["type"] == "user":
                result_ids.update(b["tool_use_id"] for b in rec["message"]["content"])
    assert len(typed) == 3000
    assert 5 <= lines / len(typed) <= 9  # about seven lines per task, results and progress included
    assert tool_ids == result_ids
    repeats = sum(c - 1 for c in Counter(typed).values())
    assert 0.01 * 3000 <= repeats <= 0.1 * 3000  # some exact duplicates for dedup, mostly unique prompts


def test_generation_is_deterministic(tmp_path):
    bench.generate(tmp_path / "a", 1000, workers=1)
    bench.generate(tmp_path / "b", 1000, workers=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jsonl"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_bench_runs_at_small_n():
    missing = [s for s in ("ingest", "dedup", "split") if bench._help(s) is None]
    if missing:
        pytest.skip(f"stage commands not available yet: {', '.join(missing)}")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "data_stages.py"), "--n", "2000",
                           "--stages", "ingest,dedup,split"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for stage in ("ingest", "dedup", "split"):
        assert any(line.startswith(stage) and "records" not in line and "FAILED" not in line
                   for line in out.splitlines()), out
    assert "ingest->split:" in out and "s wall for 2,000 tasks" in out
