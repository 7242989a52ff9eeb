"""One reader per input format; each turns one file into a `FileResult` (examples, quarantine, counted skips).

Every physical line of a file ends in exactly one bucket, so `metrics/ingest.json` reconciles exactly:
  used        - the line of a typed task that became an example, or an assistant line whose tool calls it counts
  quarantined - unreadable: too long, not UTF-8, invalid/truncated JSON, not an object, a field of the wrong type
  skipped     - everything else, by a named rule (`skipped[reason]`)
and every typed task is either kept (one example) or skipped by a named rule (`tasks_skipped[reason]`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, NamedTuple

import orjson

from toolsel.data.redact import redact
from toolsel.io import dumps_line

FORMATS = ("claude_code", "chat", "pairs")
_BLOCK = 1 << 22
_DETAIL_CHARS = 200


@dataclass(frozen=True)
class Options:
    include_subagent_tools: bool = False
    max_line_bytes: int = 16_000_000
    max_prompt_chars: int = 20_000


class Example(NamedTuple):
    """A kept example: its serialized record plus what the cross-file merge needs (a tuple: cheap to pickle)."""
    key: str | None                 # task uuid (Claude Code) for cross-file dedup of resumed sessions
    lines: int                      # lines it used (typed line + tool-call lines)
    record: bytes                   # the JSONL line, already redacted
    redactions: Counter | None = None
    spawns: list | None = None      # [(position in tools, Task tool_use id)] when subagent tools are linked


@dataclass
class SubAgent:
    """Tool calls of one subagent transcript, to be attached to the parent task's Task call (opt-in)."""
    session_id: str | None
    agent_id: str | None
    prompt: str | None = None
    tools: list = field(default_factory=list)
    lines: int = 0


@dataclass
class FileResult:
    path: str                       # display path (as the user gave it)
    format: str
    lines: int = 0
    bytes: int = 0
    sha256: str = ""
    examples: list = field(default_factory=list)
    quarantine: list = field(default_factory=list)   # (line, reason, detail)
    skipped: Counter = field(default_factory=Counter)
    tasks_skipped: Counter = field(default_factory=Counter)
    unknown_types: Counter = field(default_factory=Counter)
    prompts_truncated: int = 0
    quarantine_redactions: Counter = field(default_factory=Counter)
    # subagent linking (only filled when include_subagent_tools)
    subagents: dict = field(default_factory=dict)     # agent key -> SubAgent
    agent_links: dict = field(default_factory=dict)   # (session_id, agentId) -> Task tool_use id
    prompt_links: dict = field(default_factory=dict)  # (session_id, Task prompt) -> Task tool_use id

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def quarantine_line(self, line: int, reason: str, raw: bytes | str | None = None, detail: str = "") -> None:
        if raw is not None:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            detail = (detail + ": " if detail else "") + repr(text[:_DETAIL_CHARS])
        detail, counts = redact(detail)
        self.quarantine_redactions.update(counts)
        self.quarantine.append((line, reason, detail))

    def add_example(self, opts: Options, *, line: int, sub: int, text: str, tools: list, session_id, project,
                    timestamp, key: str | None, lines: int, spawns: list | None = None) -> None:
        """Redact, truncate (after redacting, so no secret is cut in half) and serialize one example."""
        prompt, counts = redact(text)
        if len(prompt) > opts.max_prompt_chars:
            prompt = prompt[: opts.max_prompt_chars]
            self.prompts_truncated += 1
        ident = key if key is not None else f"{self.format}:{self.path}:{line}:{sub}"
        record = {
            "id": hashlib.sha256(ident.encode("utf-8")).hexdigest()[:20],
            "prompt": prompt, "tools": tools, "format": self.format,
            "source_file": self.path, "source_line": line,
            "session_id": session_id, "project": project, "timestamp": timestamp,
        }
        self.examples.append(Example(key, lines, dumps_line(record), counts or None, spawns or None))


def iter_lines(handle: BinaryIO, max_bytes: int, digest) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, bytes without the newline); None for a line over `max_bytes` (never held whole).

    Reads big blocks (fast, and `digest` sees every byte so the manifest's sha256 costs no second pass).
    """
    lineno = 0
    carry: list[bytes] = []
    carry_len = 0
    while block := handle.read(_BLOCK):
        digest.update(block)
        parts = block.split(b"\n")
        tail = parts.pop()
        for index, part in enumerate(parts):
            lineno += 1
            if index == 0 and carry:
                too_long = carry_len + len(part) > max_bytes
                line = None if too_long else b"".join(carry) + part
                carry, carry_len = [], 0
            else:
                line = None if len(part) > max_bytes else part
            yield lineno, line
        if tail:
            carry_len += len(tail)
            # Past the limit the line is only counted: keep one marker piece, not the bytes.
            carry = [b""] if carry_len > max_bytes else carry + [tail]
    if carry_len:
        yield lineno + 1, (None if carry_len > max_bytes else b"".join(carry))


def decode_error(line: bytes) -> tuple[str, str]:
    """Quarantine reason and detail for a line orjson rejected."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as err:
        return "invalid_utf8", f"byte {err.start}"
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return "invalid_json", str(err)[:120]
    return "invalid_json", ""


def parse_object(result: FileResult, lineno: int, line: bytes) -> dict | None:
    """orjson.loads, or quarantine the line (invalid UTF-8/JSON, not an object) and return None."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        reason, detail = decode_error(line)
        result.quarantine_line(lineno, reason, line, detail)
        return None
    if not isinstance(record, dict):
        result.quarantine_line(lineno, "not_an_object", line, type(record).__name__)
        return None
    return record


def iter_records(result: FileResult, path: str, max_bytes: int, digest) -> Iterator[tuple[int, bytes, dict]]:
    """(line number, raw line, object) for every line of a one-object-per-line file (chat, pairs); lines too
    long, blank or not a JSON object are quarantined or skipped on `result` and not yielded."""
    with open(path, "rb") as handle:
        for lineno, line in iter_lines(handle, max_bytes, digest):
            result.lines = lineno
            if line is None:
                result.quarantine_line(lineno, "line_too_long", None, f"over {max_bytes} bytes")
                continue
            if not line.strip():
                result.skip("blank_line")
                continue
            record = parse_object(result, lineno, line)
            if record is not None:
                yield lineno, line, record


class WrongType(ValueError):
    """A field the reader needs has the wrong JSON type; the line is quarantined naming the field."""


def get(record: dict, key: str, types: type | tuple, default=None):
    value = record.get(key, default)
    if value is None or isinstance(value, types):
        return value
    raise WrongType(f"field '{key}': expected {_names(types)}, got {type(value).__name__}")


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return "|".join(t.__name__ for t in types)
