"""JSON Schemas for every artifact a stage reads or writes; stages validate inputs before working."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import jsonschema


class SchemaError(ValueError):
    """An artifact or params file does not match its contract; the message names file, line and field."""


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@lru_cache(maxsize=None)
def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name))


def _field(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "<root>"


def validate(obj: Any, name: str, where: str) -> None:
    """Raise SchemaError naming `where` (file or file:line) and the offending field."""
    error = jsonschema.exceptions.best_match(validator(name).iter_errors(obj))
    if error is not None:
        raise SchemaError(f"{where}: field '{_field(error)}': {error.message} (schema {name})")


def validate_records(records: Iterable[Any], name: str, path: str) -> int:
    """Validate every record of a JSONL artifact; return how many were checked."""
    count = 0
    for count, record in enumerate(records, 1):
        validate(record, name, f"{path}:{count}")
    return count
