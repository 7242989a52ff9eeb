"""Atomic, deterministic file output and JSONL input shared by every stage."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

# Sorted keys and no floats-as-locale surprises: same records give the same bytes.
_DUMP_OPTS = orjson.OPT_SORT_KEYS


def dumps_line(record: Any) -> bytes:
    return orjson.dumps(record, option=_DUMP_OPTS) + b"\n"


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Write to a temp file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should read like any other file
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    count = 0
    with atomic_open(path, "wb") as handle:
        for record in records:
            handle.write(dumps_line(record))
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield records of a JSONL file we wrote ourselves; a bad line names file and line."""
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err})") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty, key-sorted JSON (metrics, manifests): stable bytes, readable diffs."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    with atomic_open(path, "wb") as handle:
        handle.write(text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "rb") as handle:
        return orjson.loads(handle.read())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=_DUMP_OPTS)).hexdigest()
