import xml.etree.ElementTree as ET

import pytest

from toolsel.eval.baselines import run_baselines
from toolsel.eval.report import (
    eval_metrics,
    plot_rows,
    predictions_from_texts,
    render_report,
    score_systems,
    tool_f1_svg,
    write_outputs,
)
from toolsel.io import read_json, read_jsonl
from toolsel.schemas import SchemaError, validate

CANDIDATES = ["Bash", "Read", "Edit", "Grep"]
TRAIN = [{"id": f"t{i}", "prompt": p, "tools": t} for i, (p, t) in enumerate([
    ("run the tests", ["Bash"]), ("run the linter", ["Bash"]), ("read the config file", ["Read"]),
    ("edit the config file", ["Read", "Edit"]), ("find usages of foo", ["Grep", "Read"]), ("run build", ["Bash"]),
])]
TEST = [{"id": "a", "prompt": "run the tests again", "tools": ["Bash"]},
        {"id": "b", "prompt": "edit the config file now", "tools": ["Read", "Edit"]},
        {"id": "c", "prompt": "find usages of bar", "tools": ["Grep", "Read"]},
        {"id": "d", "prompt": "deploy it", "tools": ["Bash", "WebFetch"]}]
IDS = [r["id"] for r in TEST]


def model_texts(good: bool):
    if good:
        return ["- Bash<turn|>", "- Read\n- Edit<turn|>", "- grep\n- read<turn|>", "- Bash\n- Frob<turn|>"]
    return ["<|channel>thought\n<channel|><turn|>", "- Bash<turn|>", "", "- Read<turn|>"]


@pytest.fixture
def result():
    preds = run_baselines(TRAIN, TEST, CANDIDATES, k=2)
    preds["fused"] = predictions_from_texts(IDS, model_texts(True), CANDIDATES)
    preds["base"] = predictions_from_texts(IDS, model_texts(False), CANDIDATES)
    return score_systems(preds, TEST, TRAIN, bootstrap_samples=200, seed=0,
                         extra={"fused": {"mean_steps_per_block": 7.5}})


def test_metrics_by_hand(result):
    m = result["metrics"]
    assert result["systems"] == ["fused", "base", "retrieval", "train_lookup", "floor"]
    # fused: a exact, b exact, c exact, d: V={Bash}, I=1 (Frob), G={Bash, WebFetch} -> tp 1 fp 1 fn 1
    assert m["fused"]["jaccard"] == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)
    assert m["fused"]["exact"] == pytest.approx(3 / 4)
    assert m["fused"]["invalid_rate"] == pytest.approx(1 / 4)
    assert m["fused"]["mean_steps_per_block"] == 7.5
    # floor k=2: Bash (3), Read (3) -> ["Bash", "Read"] for every example
    assert m["floor"]["jaccard"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 3) / 4)
    assert m["floor"]["top1"] == pytest.approx(2 / 4)  # Bash is gold in a and d
    # base: marker-only, wrong, empty, wrong
    assert m["base"]["jaccard"] == 0 and m["base"]["empty_rate"] == pytest.approx(2 / 4)
    for system in result["systems"]:
        assert m[system]["jaccard_lo"] <= m[system]["jaccard"] <= m[system]["jaccard_hi"]
        assert m[system]["n"] == 4


def test_head_tail_and_paired(result):
    # train tool uses: Bash 3, Read 3, Edit 1, Grep 1 -> 80% of 8 = 6.4: head = {Bash, Read, Edit}
    groups = {t["tool"]: t["group"] for t in result["tools"]}
    assert groups == {"Bash": "head", "Read": "head", "Edit": "head", "Grep": "tail", "WebFetch": "tail"}
    pairs = {(p["a"], p["b"]) for p in result["paired"]}
    assert pairs == {("fused", "floor"), ("fused", "base"), ("fused", "retrieval")}  # no adapter system given
    assert "jaccard_vs_floor" in result["metrics"]["fused"]
    assert result["metrics"]["fused"]["jaccard_vs_base"] == pytest.approx(result["metrics"]["fused"]["jaccard"])


def test_eval_json_and_predictions_follow_their_schemas(result):
    validate(eval_metrics(result), "eval_metrics", "eval.json")
    for i, record in enumerate(result["records"]):
        validate(record, "predictions", f"predictions.jsonl:{i + 1}")
    with pytest.raises(SchemaError, match="jaccard"):
        validate({"fused": {"n": 3}}, "eval_metrics", "eval.json")


def test_missing_or_unknown_predictions_are_an_error():
    preds = {"fused": predictions_from_texts(IDS[:3], model_texts(True)[:3], CANDIDATES)}
    with pytest.raises(ValueError, match="1 ids missing"):
        score_systems(preds, TEST, TRAIN, bootstrap_samples=10)
    twice = predictions_from_texts(IDS, model_texts(True), CANDIDATES) * 2
    with pytest.raises(ValueError, match="twice with the same seed"):
        score_systems({"fused": twice}, TEST, TRAIN, bootstrap_samples=10)


def test_seeds_are_averaged_per_example():
    runs = (predictions_from_texts(IDS, ["- Bash<turn|>"] * 4, CANDIDATES, seed=0)
            + predictions_from_texts(IDS, ["- Read<turn|>"] * 4, CANDIDATES, seed=1))
    out = score_systems({"fused": runs}, TEST, TRAIN, bootstrap_samples=50)
    # example a: Bash exact (1) and Read wrong (0) -> 0.5
    assert out["metrics"]["fused"]["exact"] == pytest.approx(0.5 / 4)
    single = score_systems({"fused": runs[:4]}, TEST, TRAIN, bootstrap_samples=50)
    other = score_systems({"fused": runs[4:]}, TEST, TRAIN, bootstrap_samples=50)
    mean = (single["metrics"]["fused"]["jaccard"] + other["metrics"]["fused"]["jaccard"]) / 2
    assert out["metrics"]["fused"]["jaccard"] == pytest.approx(mean)
    assert len(out["records"]) == 8


def test_report_plot_and_svg(result):
    report = render_report(result, "eval_tool_f1.svg")
    assert "| fused | 0.833 [" in report
    assert "| fused | floor |" in report
    assert "0/4 test examples" in report  # contamination probe: no exact prompt in train
    rows = plot_rows(result)
    assert {r["tool"] for r in rows} == {"Bash", "Read", "Edit", "Grep", "WebFetch"}
    assert all(0 <= r[s] <= 1 for r in rows for s in result["systems"])
    svg = ET.fromstring(tool_f1_svg(result))
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}circle")) >= 5 * 5


def test_write_outputs_is_deterministic(tmp_path, result):
    def write(folder):
        paths = dict(metrics_path=folder / "eval.json", report_path=folder / "eval_report.md",
                     predictions_path=folder / "pred" / "predictions.jsonl", plot_path=folder / "tool_f1.json",
                     svg_path=folder / "tool_f1.svg")
        write_outputs(result, **paths)
        return {k: p.read_bytes() for k, p in paths.items()}

    first, second = write(tmp_path / "one"), write(tmp_path / "two")
    assert first == second
    assert read_json(tmp_path / "one" / "eval.json")["fused"]["n"] == 4
    assert len(list(read_jsonl(tmp_path / "one" / "pred" / "predictions.jsonl"))) == 5 * 4
    assert b"](tool_f1.svg)" in first["report_path"] and str(tmp_path).encode() not in first["report_path"]


def test_same_inputs_same_bootstrap():
    preds = {"fused": predictions_from_texts(IDS, model_texts(True), CANDIDATES)}
    a = score_systems(preds, TEST, TRAIN, bootstrap_samples=100, seed=5)
    b = score_systems(preds, TEST, TRAIN, bootstrap_samples=100, seed=5)
    assert eval_metrics(a) == eval_metrics(b)
