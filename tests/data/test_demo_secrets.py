"""End to end: no secret the demo generator planted survives ingest, in examples or quarantine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET_SHAPES = [r"sk-ant-api03-[\w-]{20,}", r"sk-(?:proj-)?[A-Za-z0-9]{20,}", r"AKIA[A-Z2-7]{16}",
                 r"ghp_[A-Za-z0-9]{36}", r"xoxb-\d+-\d+-\w+", r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+",
                 r"sk_(?:live|test)_\w{16,}", r"PRIVATE KEY-----\n\S+", r"postgres://\w+:[^@\s]+@",
                 r"password (?:is|was) (\S*\d\S*)"]


def planted_secrets() -> set[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_demo import build_corpus

    _, truth = build_corpus()
    found = set()
    for task in truth:
        if task["secrets"]:
            for shape in SECRET_SHAPES:
                for match in re.finditer(shape, task["prompt"]):
                    found.add((match.group(1) if match.groups() else match.group(0)).rstrip(".,"))
    return found


def test_no_planted_secret_reaches_the_dataset(tmp_path):
    secrets = planted_secrets()
    assert len(secrets) >= 20  # the generator plants many, of every kind
    out = tmp_path / "ingested"
    subprocess.run([sys.executable, "-m", "toolsel.cli", "ingest", "--sources", str(ROOT / "data/demo/claude-code"),
                    "--output", str(out), "--metrics", str(tmp_path / "m.json")], check=True, cwd=tmp_path,
                   capture_output=True)
    written = (out / "examples.jsonl").read_text() + (out / "quarantine.jsonl").read_text()
    leaked = sorted(s for s in secrets if s in written.replace("\\n", "\n"))
    assert not leaked, leaked[:5]
    assert "[REDACTED:password]" in written
