"""Turn a decoded canvas (or any text) into predicted tool names; never raises on odd text.

The answer format is `- ToolName` lines ending with `<turn|>`. The parser keeps what a reader would:
- the answer ends at the first `<turn|>` or `<eos>` (the reference sampler stops there too);
- `<|channel>...<channel|>` blocks, a re-emitted `<|turn>role` header and any other special marker are dropped;
- list items may be bulleted (`-`, `*`, `+`, `•`, `1.`, `1)`) or bare; an item may hold `A, B` or trailing
  prose (`- Bash: run the tests` -> Bash); a non-list line of prose is stray text and ignored;
- names match the candidates case-insensitively and come back in the candidate's spelling; duplicates keep
  the first; a name-like item outside the candidates is an invalid prediction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

END_MARKERS = ("<turn|>", "<eos>")
_CHANNEL_BLOCK = re.compile(r"<\|channel>.*?<channel\|>", re.DOTALL)
# An opening marker keeps its role word (`<|turn>model`, `<|channel>thought`): drop both.
_OPENING_WITH_ROLE = re.compile(r"<\|(?:turn|channel)>[^\W\d]*")
_MARKER = re.compile(r"<\|[^<>\s]{1,24}>|<[^<>\s|]{1,24}\|>|<(?:eos|bos|pad|unk|mask)>")
_END = re.compile("|".join(re.escape(m) for m in END_MARKERS))
_BULLET = re.compile(r"^(?:[-*+•‣–]|\d{1,3}[.)])\s*")
_NAME = re.compile(r"[^\W\d][\w.\-]*")
_MARKUP = "`*'\"“”‘’[]()"
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class ParsedTools:
    """`valid`: candidate names in answer order (canonical spelling); `invalid`: other name-like items;
    `empty`: no name at all; `marker_only`: the text had special markers and nothing else in its answer."""

    valid: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    empty: bool = True
    marker_only: bool = False


@lru_cache(maxsize=64)
def _lookup(candidates: tuple[str, ...]) -> dict[str, str]:
    """casefolded name -> canonical spelling; the earlier candidate wins a case-only clash."""
    table: dict[str, str] = {}
    for name in candidates:
        table.setdefault(name.strip().casefold(), name)
    return table


def answer_region(text: str) -> tuple[str, bool]:
    """The answer text with markers removed, and whether any marker was seen."""
    without_blocks = _CHANNEL_BLOCK.sub("\n", text)
    end = _END.search(without_blocks)
    head = without_blocks[: end.start()] if end else without_blocks
    head = _OPENING_WITH_ROLE.sub("\n", head)
    cleaned = _MARKER.sub("\n", head)
    had_markers = cleaned != without_blocks or without_blocks != text
    return cleaned, had_markers


def _strip_markup(item: str) -> str:
    return item.strip().strip(_MARKUP).strip().rstrip(".,;:!?").strip(_MARKUP).strip()


def _pure_name(part: str) -> str | None:
    """`part` if it is exactly one name-like token, else None."""
    part = _strip_markup(part)
    return part if len(part) <= MAX_NAME_CHARS and _NAME.fullmatch(part) else None


def _leading_name(item: str) -> str | None:
    """The name an item starts with (`Bash: run tests` -> `Bash`), or None for prose/garbage."""
    match = _NAME.match(_strip_markup(item))
    if not match or len(match.group()) > MAX_NAME_CHARS:
        return None
    return match.group().rstrip(".-") or None


def _line_names(line: str, table: dict[str, str]) -> list[str]:
    line = line.strip()
    bullet = _BULLET.match(line)
    item = line[bullet.end():] if bullet else line
    if _strip_markup(item).casefold() in table:  # a candidate with unusual characters, whole
        return [_strip_markup(item)]
    parts = re.split(r"[,;]", item)
    if bullet:
        first = _leading_name(parts[0])
        rest = [_pure_name(p) for p in parts[1:]]
        return [n for n in [first, *rest] if n]
    names = [_pure_name(p) for p in parts if p.strip()]
    return names if names and all(names) else []  # bare prose is stray text


def parse_tools(text: str, candidates: Sequence[str] | Iterable[str]) -> ParsedTools:
    """Predicted tool names in `text`, split into candidates (`valid`) and others (`invalid`)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    table = _lookup(tuple(candidates))
    region, had_markers = answer_region(text)
    valid, invalid = _classify((name for line in region.splitlines() for name in _line_names(line, table)), table)
    empty = not valid and not invalid
    marker_only = empty and had_markers and not region.strip()
    return ParsedTools(valid=valid, invalid=invalid, empty=empty, marker_only=marker_only)


def classify_names(names: Iterable[str], candidates: Sequence[str]) -> ParsedTools:
    """Names already extracted (a baseline's output) through the same candidate check and dedup."""
    valid, invalid = _classify(names, _lookup(tuple(candidates)))
    return ParsedTools(valid=valid, invalid=invalid, empty=not valid and not invalid)


def _classify(names: Iterable[str], table: dict[str, str]) -> tuple[list[str], list[str]]:
    """(candidates in canonical spelling, other names), first occurrence only, compared case-insensitively."""
    valid, invalid, seen = [], [], set()
    for name in names:
        key = name.strip().casefold()
        if key in seen:
            continue
        seen.add(key)
        if key in table:
            valid.append(table[key])
        else:
            invalid.append(name)
    return valid, invalid


class OutputsInsaneError(ValueError):
    """Most decoded outputs carry no valid tool name: the decoder, not the model's skill, is broken."""


def output_health(raw_texts: Sequence[str], candidates: Sequence[str]) -> dict[str, int]:
    """Counts of outputs that are blank, marker-only, stray text only, only invalid names, or fine."""
    counts = {"total": 0, "blank": 0, "marker_only": 0, "stray_only": 0, "invalid_only": 0, "ok": 0}
    for text in raw_texts:
        counts["total"] += 1
        parsed = parse_tools(text, candidates)
        if parsed.valid:
            kind = "ok"
        elif parsed.invalid:
            kind = "invalid_only"
        elif parsed.marker_only:
            kind = "marker_only"
        elif not (text or "").strip():
            kind = "blank"
        else:
            kind = "stray_only"
        counts[kind] += 1
    return counts


def check_outputs_sane(raw_texts: Sequence[str], candidates: Sequence[str], *,
                       max_bad_fraction: float = 0.5, system: str = "model") -> dict[str, int]:
    """Raise OutputsInsaneError when more than `max_bad_fraction` of the outputs name no candidate tool
    (blank, marker-only, stray text or invalid names only); else return the health counts."""
    counts = output_health(raw_texts, candidates)
    total = counts["total"]
    bad = total - counts["ok"]
    if total == 0 or bad / total > max_bad_fraction:
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("total", "ok") and v)
        raise OutputsInsaneError(
            f"{system}: {bad}/{total} outputs name no candidate tool ({detail or 'no outputs'}); "
            f"limit is {max_bad_fraction:.0%}. Check the sampler (steps per block, renoised canvas, "
            f"channel markers) before trusting any metric.")
    return counts
