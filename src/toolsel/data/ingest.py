"""Ingest: trace sources -> redacted typed-task examples + quarantine + reconciled counts.

Sources are paths, directories (every `*.jsonl` below, dot-folders included) or globs (`**` recursive, hidden
entries included); each file's format is detected from its first records unless given. Files are independent,
so they are read by a pool of processes (the merge keeps the sorted file order, so output bytes do not depend
on the pool). Examples come out sorted by (source_file, source_line); quarantine likewise.

Accounting (checked on every run, see formats/__init__.py):
  lines.read = lines.used + lines.quarantined + sum(lines.skipped_by_reason)
  tasks.typed = tasks.kept + sum(tasks.skipped_by_reason)
Quarantine records with line 0 concern a whole file (unreadable); they hold no lines.
Across files, a Claude Code task whose uuid was already kept (a resumed session repeats history) is skipped as
duplicate_task: the first by (source_file, source_line) wins.
"""

from __future__ import annotations

import glob
import hashlib
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import orjson

from toolsel.data.formats import FileResult, Options, iter_lines
from toolsel.data.formats.chat import read_chat
from toolsel.data.formats.claude_code import read_claude_code
from toolsel.data.formats.detect import detect_format
from toolsel.data.formats.pairs import read_pairs
from toolsel.io import dumps_line

READERS = {"claude_code": read_claude_code, "chat": read_chat, "pairs": read_pairs}
_PARALLEL_MIN_BYTES = 8 << 20   # below this a process pool costs more than it saves
_MAX_UNKNOWN_TYPES = 20


class SourceError(ValueError):
    """A source entry matches no file, or names an unknown format."""


@dataclass(frozen=True)
class InputFile:
    path: str      # where to open it
    display: str   # as the user spelled it (relative stays relative): used in every output
    format: str    # auto | claude_code | chat | pairs


def _glob_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def resolve_sources(entries: Iterable[str | dict]) -> list[InputFile]:
    """Expand source entries (str, or {path, format}) to files, sorted by display path, each file once."""
    found: dict[str, InputFile] = {}
    for entry in entries:
        spec, fmt = (entry, "auto") if isinstance(entry, str) else (entry["path"], entry.get("format", "auto"))
        if fmt not in ("auto", *READERS):
            raise SourceError(f"source {spec!r}: unknown format {fmt!r} (auto, {', '.join(READERS)})")
        expanded = os.path.expanduser(spec)
        if _glob_magic(expanded):
            paths = [p for p in glob.glob(expanded, recursive=True, include_hidden=True) if os.path.isfile(p)]
        elif os.path.isdir(expanded):
            pattern = os.path.join(glob.escape(expanded), "**", "*.jsonl")
            paths = [p for p in glob.glob(pattern, recursive=True, include_hidden=True) if os.path.isfile(p)]
        elif os.path.isfile(expanded):
            paths = [expanded]
        else:
            paths = []
        if not paths:
            raise SourceError(f"source {spec!r} matches no file")
        for path in paths:
            display = os.path.normpath(path)
            real = os.path.realpath(path)
            if real not in found:
                found[real] = InputFile(path, display, fmt)
    return sorted(found.values(), key=lambda f: f.display)


def read_file(job: tuple[InputFile, Options]) -> FileResult:
    """Read one file with its reader (in a worker process); never raises for bad content."""
    source, opts = job
    digest = hashlib.sha256()
    try:
        fmt = source.format if source.format != "auto" else detect_format(source.path)
        if fmt == "unknown":
            result = _read_unknown(source, opts, digest)
        else:
            result = READERS[fmt](source.path, source.display, opts, digest)
    except OSError as err:
        result = FileResult(source.display, "unreadable")
        result.quarantine_line(0, "unreadable_file", None, f"{type(err).__name__}: {err.strerror}")
    result.bytes = _size(source.path)
    result.sha256 = digest.hexdigest()
    return result


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_unknown(source: InputFile, opts: Options, digest) -> FileResult:
    """A file no reader recognizes: every non-blank line is quarantined (so a wrong glob is visible)."""
    result = FileResult(source.display, "unknown")
    with open(source.path, "rb") as handle:
        for lineno, line in iter_lines(handle, opts.max_line_bytes, digest):
            result.lines = lineno
            if line is not None and not line.strip():
                result.skip("blank_line")
            else:
                result.quarantine_line(lineno, "unknown_format", line, "no reader recognizes this file")
    return result


def _results(files: list[InputFile], opts: Options, workers: int) -> Iterator[FileResult]:
    jobs = [(f, opts) for f in files]
    if workers <= 1:
        yield from map(read_file, jobs)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(read_file, jobs, chunksize=1)


def auto_workers(files: list[InputFile]) -> int:
    """Two processes (the target machine's cores) when there is enough data to pay for them."""
    total = sum(_size(f.path) for f in files)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores, len(files))) if total >= _PARALLEL_MIN_BYTES else 1


def splice_tools(tools: list[str], inserts: list[tuple[int, list[str]]]) -> list[str]:
    """Insert each subagent's tools after the first `pos` parent tools (right after its Task call); unique."""
    at = defaultdict(list)
    for pos, sub_tools in inserts:
        at[pos].extend(sub_tools)
    out: list[str] = []
    for index in range(len(tools) + 1):
        for name in at.get(index, ()):
            if name not in out:
                out.append(name)
        if index < len(tools) and tools[index] not in out:
            out.append(tools[index])
    return out


def link_subagents(results: list[FileResult]) -> list[FileResult]:
    """include_subagent_tools: attach each subagent file's tools to the task whose Task call spawned it."""
    owners, agent_links, prompt_links = {}, {}, {}
    for r_index, result in enumerate(results):
        agent_links.update(result.agent_links)
        prompt_links.update(result.prompt_links)
        for e_index, example in enumerate(result.examples):
            for pos, tool_id in example.spawns or ():
                owners[tool_id] = (r_index, e_index, pos)
    inserts: dict[tuple[int, int], list] = defaultdict(list)
    for result in results:
        for (session_id, agent_id), sub in sorted(result.subagents.items(), key=lambda kv: str(kv[0])):
            tool_id = agent_links.get((session_id, agent_id)) or prompt_links.get((session_id, (sub.prompt or "").strip()))
            owner = owners.get(tool_id)
            if owner is None or not sub.lines:
                result.skip("subagent_unlinked", sub.lines)
                continue
            inserts[owner[:2]].append((owner[2], sub.tools, sub.lines))
    for (r_index, e_index), items in inserts.items():
        example = results[r_index].examples[e_index]
        record = orjson.loads(example.record)
        record["tools"] = splice_tools(record["tools"], [(pos, tools) for pos, tools, _ in items])
        results[r_index].examples[e_index] = example._replace(
            record=dumps_line(record), lines=example.lines + sum(n for _, _, n in items))
    return results


def ingest(files: list[InputFile], opts: Options, examples_out: BinaryIO, quarantine_out: BinaryIO, *,
           workers: int = 0, on_file: Callable[[FileResult], None] | None = None) -> dict:
    """Read `files`, write examples and quarantine records (JSONL bytes) and return the report.

    The report holds `metrics` (for metrics/ingest.json) and `inputs` (per-file format, bytes, lines, sha256).
    """
    workers = workers or auto_workers(files)
    results: Iterable[FileResult] = _results(files, opts, workers)
    if opts.include_subagent_tools:
        results = link_subagents(list(results))
    totals = _Totals()
    inputs = []
    seen_keys: set[str] = set()
    for result in results:
        totals.add_file(result)
        for example in result.examples:
            if example.key is not None:
                if example.key in seen_keys:
                    totals.skipped["duplicate_task"] += example.lines
                    totals.tasks_skipped["duplicate_task"] += 1
                    continue
                seen_keys.add(example.key)
            examples_out.write(example.record)
            totals.kept += 1
            totals.used += example.lines
            if example.redactions:
                totals.redactions.update(example.redactions)
        for line, reason, detail in result.quarantine:
            quarantine_out.write(dumps_line({"file": result.path, "line": line, "reason": reason, "detail": detail}))
        inputs.append({"path": result.path, "format": result.format, "bytes": result.bytes,
                       "lines": result.lines, "sha256": result.sha256})
        if on_file is not None:
            on_file(result)
    return {"metrics": totals.metrics(), "inputs": inputs, "workers": workers}


class _Totals:
    """Sums of every FileResult; `metrics()` checks that lines and tasks reconcile exactly."""

    def __init__(self):
        self.kept = self.used = self.lines = self.bytes = self.truncated = 0
        self.files, self.skipped, self.tasks_skipped = Counter(), Counter(), Counter()
        self.quarantined, self.redactions, self.q_redactions, self.unknown = Counter(), Counter(), Counter(), Counter()
        self.quarantined_lines = 0

    def add_file(self, result: FileResult) -> None:
        self.files[result.format] += 1
        self.files["_empty"] += result.lines == 0 and result.format != "unreadable"
        self.lines += result.lines
        self.bytes += result.bytes
        self.skipped.update(result.skipped)
        self.tasks_skipped.update(result.tasks_skipped)
        self.unknown.update(result.unknown_types)
        self.truncated += result.prompts_truncated
        self.q_redactions.update(result.quarantine_redactions)
        for line, reason, _ in result.quarantine:
            self.quarantined[reason] += 1
            self.quarantined_lines += line > 0

    def metrics(self) -> dict:
        skipped = sum(self.skipped.values())
        if self.lines != self.used + self.quarantined_lines + skipped:
            raise AssertionError(f"ingest accounting: {self.lines} lines read != {self.used} used + "
                                 f"{self.quarantined_lines} quarantined + {skipped} skipped")
        empty = self.files.pop("_empty", 0)
        return {
            "files": {"read": sum(self.files.values()), "empty": empty, "by_format": dict(sorted(self.files.items()))},
            "bytes_read": self.bytes,
            "lines": {"read": self.lines, "used": self.used, "quarantined": self.quarantined_lines,
                      "skipped": skipped, "skipped_by_reason": dict(sorted(self.skipped.items()))},
            "quarantine": {"records": sum(self.quarantined.values()), "by_reason": dict(sorted(self.quarantined.items()))},
            "tasks": {"typed": self.kept + sum(self.tasks_skipped.values()), "kept": self.kept,
                      "skipped": sum(self.tasks_skipped.values()),
                      "skipped_by_reason": dict(sorted(self.tasks_skipped.items()))},
            "examples": self.kept,
            "prompts_truncated": self.truncated,
            "redactions": dict(sorted(self.redactions.items())),
            "quarantine_redactions": dict(sorted(self.q_redactions.items())),
            "unknown_record_types": dict(sorted(self.unknown.most_common(_MAX_UNKNOWN_TYPES))),
        }
