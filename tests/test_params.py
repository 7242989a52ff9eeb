"""params.yaml <-> schema <-> dvc.yaml <-> code: every key is valid, wired and actually read."""

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from toolsel.params import load_params
from toolsel.schemas import SchemaError

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
DVC = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())
CODE = sorted([*ROOT.glob("stages/*.py"), *ROOT.glob("src/toolsel/**/*.py")])
STAGE_SECTIONS = {"ingest", "dedup", "split", "base", "render", "train", "fuse", "eval"}


def leaf_keys(node, prefix=()):
    """Key paths of params.yaml down to scalars and lists (a dict of overrides counts as its keys)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaf_keys(value, prefix + (key,))
        else:
            yield prefix + (key,)


def dvc_param_refs():
    for name, stage in DVC["stages"].items():
        for entry in stage.get("params", []):
            if isinstance(entry, dict):  # {other_file.yaml: [keys]}
                for keys in entry.values():
                    yield from ((name, key) for key in keys)
            else:
                yield name, entry


def test_params_yaml_validates():
    assert set(PARAMS) >= {"lr", "model", "ingest", "dedup", "split", "render"}


@pytest.mark.parametrize("stage,ref", list(dvc_param_refs()))
def test_every_dvc_params_key_exists(stage, ref):
    node = PARAMS
    for part in ref.split("."):
        assert isinstance(node, dict) and part in node, f"dvc.yaml stage {stage}: params key {ref!r} not in params.yaml"
        node = node[part]


@pytest.mark.parametrize("path", [".".join(p) for p in leaf_keys(PARAMS)])
def test_every_params_key_is_read_by_code(path):
    section = "train" if path == "lr" else path.split(".")[0]
    if section in STAGE_SECTIONS and not (ROOT / "stages" / f"{section}.py").exists():
        pytest.skip(f"stages/{section}.py not written yet")
    assert readers_of(path.split(".")[-1]), f"params.yaml key {path!r} is read by no stage module or core module"


def readers_of(key: str) -> list[Path]:
    """Code files that read `key`: params["key"] / .get('key') / key=... (keyword, splatted section) / key: (param)."""
    pattern = re.compile(rf"""["']{re.escape(key)}["']|\b{re.escape(key)}\s*(=[^=]|:)""")
    return [p.relative_to(ROOT) for p in CODE if pattern.search(p.read_text("utf-8"))]


def test_the_read_check_can_fail():
    assert readers_of("max_candidates") and readers_of("group_key")
    assert readers_of("an_unused_knob_nobody_reads") == []


@pytest.mark.parametrize("section", [s for s in PARAMS if s != "lr"])
def test_every_section_is_tracked_by_its_stage(section):
    if section not in DVC["stages"]:
        other = [s for s, ref in dvc_param_refs() if ref == section or ref.startswith(section + ".")]
        if not other:
            pytest.skip(f"no dvc.yaml stage {section!r} yet")
        return
    refs = [ref for s, ref in dvc_param_refs() if s == section]
    assert any(ref == section or ref.startswith(section + ".") for ref in refs), \
        f"dvc.yaml stage {section} does not list its params section"


def test_unknown_or_mistyped_keys_are_named(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    cases = {
        "split:\n  group_key": ("split:\n  seeed: 1\n  group_key", "seeed"),
        "render:\n": ("rendr: {}\nrender:\n", "rendr"),
        "overflow: truncate": ("overflow: trunc", "overflow"),
        "max_candidates: 40": ("max_candidates: many", "max_candidates"),
    }
    for old, (new, named) in cases.items():
        assert old in text, old
        bad = tmp_path / "params.yaml"
        bad.write_text(text.replace(old, new, 1))
        with pytest.raises(SchemaError, match=re.escape(named)):
            load_params(bad)
