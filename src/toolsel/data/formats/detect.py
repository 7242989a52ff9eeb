"""Detect a file's format from its first records (file names and extensions are not trusted)."""

from __future__ import annotations

import orjson

_PROBE_LINES = 20
_PROBE_BYTES = 1 << 20  # a first line may be a multi-MB tool result: look at its head only


def classify(record: dict) -> str | None:
    if isinstance(record.get("messages"), list):
        return "chat"
    if "prompt" in record and "response" in record:
        return "pairs"
    if any(key in record for key in ("sessionId", "parentUuid", "uuid", "leafUuid")) or "type" in record:
        return "claude_code"
    return None


def _classify_bytes(head: bytes) -> str | None:
    """For a line too long (or broken) to parse: the same decision from its leading bytes."""
    if b'"messages":[' in head[:4096]:
        return "chat"
    if b'"sessionId":' in head or b'"parentUuid":' in head or head.startswith(b'{"type":'):
        return "claude_code"
    if b'"prompt":' in head and b'"response":' in head:
        return "pairs"
    return None


def detect_format(path: str) -> str:
    """`claude_code`, `chat`, `pairs`, or `unknown` (empty file, or nothing recognizable in the first lines)."""
    with open(path, "rb") as handle:
        for _ in range(_PROBE_LINES):
            head = handle.readline(_PROBE_BYTES)
            if not head:
                break
            rest = head
            while rest and not rest.endswith(b"\n"):  # skip the rest of a long line, chunk by chunk
                rest = handle.readline(_PROBE_BYTES)
            if not head.strip():
                continue
            try:
                record = orjson.loads(head)
            except orjson.JSONDecodeError:
                found = _classify_bytes(head)
            else:
                found = classify(record) if isinstance(record, dict) else None
            if found:
                return found
    return "unknown"
