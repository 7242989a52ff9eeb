"""`dvc repro` of the data stages (ingest -> dedup -> split) in a throwaway git repo: outputs appear, and a
second repro does nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("ingest", "dedup", "split")
SMALL_SOURCE = "tests/fixtures/ingest"  # Claude Code, chat and pairs files, a few KB


def _copy(rel: str, dest: Path) -> None:
    src, dst = ROOT / rel, dest / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(src, dst)


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    if not (ROOT / "stages" / "ingest.py").exists():
        pytest.skip("the ingest stage is not written yet")
    yaml = YAML(typ="safe", pure=True)
    dvc = yaml.load((ROOT / "dvc.yaml").read_text())
    stages = {name: dvc["stages"][name] for name in DATA_STAGES}
    # ingest reads a small fixture instead of the demo corpus: its data deps point there too
    stages["ingest"]["deps"] = [d for d in stages["ingest"]["deps"] if not d.startswith("data/")] + [SMALL_SOURCE]
    dest = tmp_path_factory.mktemp("dvc-repo")
    produced = {out for stage in stages.values() for out in stage.get("outs", [])}
    for dep in {d for stage in stages.values() for d in stage["deps"]}:
        if not any(dep == out or dep.startswith(out + "/") for out in produced):
            _copy(dep, dest)
    params = yaml.load((ROOT / "params.yaml").read_text())
    params["ingest"]["sources"] = [SMALL_SOURCE + "/claude", SMALL_SOURCE + "/chat.jsonl"]
    with open(dest / "params.yaml", "w") as handle:
        YAML().dump(params, handle)
    with open(dest / "dvc.yaml", "w") as handle:
        YAML().dump({"stages": stages}, handle)
    _run(["git", "init", "-q"], dest)
    _run(["dvc", "init", "-q"], dest)
    return dest


@pytest.mark.slow
def test_dvc_repro_data_stages_then_nothing_to_do(repo):
    out = _run(["dvc", "repro", "split"], repo)
    assert "[ingest]" in out and "[dedup]" in out and "[split]" in out
    for rel in ("data/ingested/examples.jsonl", "data/dedup/examples.jsonl", "data/split/train.jsonl",
                "data/split/valid.jsonl", "data/split/test.jsonl", "data/split/manifest.json",
                "metrics/ingest.json", "metrics/dedup.json", "metrics/split.json", "dvc.lock"):
        assert (repo / rel).exists(), rel
    assert (repo / "data/dedup/examples.jsonl").read_text().strip()
    stamps = {p: p.stat().st_mtime_ns for p in (repo / "data").rglob("*.jsonl")}

    again = _run(["dvc", "repro", "split"], repo)
    assert "[ingest]" not in again and "[dedup]" not in again and "[split]" not in again
    assert "up to date" in _run(["dvc", "status"], repo)
    assert {p: p.stat().st_mtime_ns for p in (repo / "data").rglob("*.jsonl")} == stamps
