"""`toolsel ingest` end to end, and a property test: arbitrary bytes never crash ingest and always reconcile."""

import io
import json
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from toolsel.cli import app
from toolsel.data.formats import Options
from toolsel.data.ingest import InputFile, ingest
from toolsel.schemas import validate

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/fixtures/ingest"


def test_stage_writes_validated_outputs_and_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, metrics = tmp_path / "ingested", tmp_path / "m" / "ingest.json"
    args = ["ingest", "--sources", "tests/fixtures/ingest/claude", "--sources", "tests/fixtures/ingest/bad",
            "--output", str(out), "--metrics", str(metrics), "--max-line-bytes", "4096"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[ingest]" in result.output and "examples" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    validate(manifest, "ingest_manifest", "manifest")
    assert manifest["stage_version"] == "1" and manifest["params"]["max_line_bytes"] == 4096
    assert all(not Path(i["path"]).is_absolute() and len(i["sha256"]) == 64 for i in manifest["inputs"])
    m = json.loads(metrics.read_text())
    assert manifest["counts"]["examples"] == m["examples"] == len((out / "examples.jsonl").read_text().splitlines())
    assert m["quarantine"]["records"] == len((out / "quarantine.jsonl").read_text().splitlines())
    first = (out / "examples.jsonl").read_bytes()
    assert CliRunner().invoke(app, args + ["--workers", "2"]).exit_code == 0
    assert (out / "examples.jsonl").read_bytes() == first           # same inputs => same bytes


def test_stage_reads_params_and_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.jsonl").write_text('{"prompt": "Rename foo", "response": "- Edit<turn|>"}\n')
    result = CliRunner().invoke(app, ["ingest", "--sources", "missing/*.jsonl"])
    assert result.exit_code == 1 and "matches no file" in result.output
    # no params.yaml but explicit --sources: built-in defaults
    assert CliRunner().invoke(app, ["ingest", "--sources", "in"]).exit_code == 0
    assert json.loads(Path("metrics/ingest.json").read_text())["examples"] == 1
    result = CliRunner().invoke(app, ["ingest", "--params", "nope.yaml"])
    assert result.exit_code == 1 and "nope.yaml" in result.output


_line = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["type", "message", "uuid", "isSidechain", "content", "operation", "isMeta", "sessionId"]),
        st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                               st.sampled_from(["user", "assistant", "tool_use", "queue-operation", "enqueue",
                                                "remove", "progress", "text", "Bash"])),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.sampled_from(["type", "name", "content", "text"]),
                                                             inner, max_size=3)),
                     max_leaves=8),
        max_size=5)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=12), fmt=st.sampled_from(["auto", "claude_code", "chat", "pairs"]))
def test_arbitrary_input_never_crashes_and_reconciles(tmp_path, lines, fmt):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    examples, quarantine = io.BytesIO(), io.BytesIO()
    report = ingest([InputFile(str(path), "fuzz.jsonl", fmt)], Options(max_line_bytes=64), examples, quarantine,
                    workers=1)
    m = report["metrics"]   # ingest itself raises if lines or tasks do not reconcile
    assert m["lines"]["read"] == m["lines"]["used"] + m["lines"]["quarantined"] + m["lines"]["skipped"]
    for line in examples.getvalue().splitlines():
        validate(orjson.loads(line), "example", "fuzz")
    for line in quarantine.getvalue().splitlines():
        validate(orjson.loads(line), "quarantine", "fuzz")
