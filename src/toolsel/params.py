"""Read params.yaml (YAML 1.2, so `1e-5` is a float) and validate it against its JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from toolsel.schemas import SchemaError, validate

DEFAULT_PARAMS = Path("params.yaml")


def _plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dicts/lists."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole params file, validated: an unknown or mistyped key is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        data = _plain(YAML(typ="safe", pure=True).load(path.read_text("utf-8")))
    except Exception as err:  # ruamel raises many types; all mean "not valid YAML"
        raise SchemaError(f"{path}: not valid YAML: {err}") from None
    validate(data, "params", str(path))
    return data


def section(path: str | Path, name: str) -> dict[str, Any]:
    """One stage's section of params.yaml (stage name = command name = section)."""
    return load_params(path)[name]
