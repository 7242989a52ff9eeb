"""Claude Code session transcripts (`~/.claude/projects/<project>/*.jsonl`) -> typed-task examples.

Judgment calls (also in README, "ingest"):
- A typed task is a `user` line that is not a tool result, not `isMeta`, not `isCompactSummary`, not a sidechain
  (subagent) line, not a slash command (`<command-name>`/`<command-message>`/`<command-args>`), not local-command
  output/caveat, not `[Request interrupted by user...]`, not a `<task-notification>`, not `!` shell-mode
  (`<bash-input>`/`<bash-stdout>`), not a compaction continuation text. Where `promptSource` or `origin.kind`
  is present, it must also say "typed"/"human". `<system-reminder>` blocks are cut from the text.
- Its tools are the `tool_use` names of main-chain assistant lines up to the next typed task, unique, in order of
  first use. Several lines sharing one `message.id` are one API message: names are a set, nothing double counts.
  Interrupts, task notifications and compaction do not end a task (the agent carries on with it); a slash command
  does (what follows serves the command, not the task: those calls are skipped as tool_use_after_slash_command).
- Subagents: by default the parent's `Task` call stands for the subagent's work; sidechain lines are skipped.
  With include_subagent_tools the subagent's tools are spliced in right after the parent's Task call (linked by
  agentId from progress/tool-result lines, else by the Task prompt). `agent-acompact-*` files are compaction
  workers and are skipped whole. `progress` lines (incl. `agent_progress`, which embeds whole subagent messages)
  never count as tool calls.
- A prompt typed while the agent was busy appears only as a `queue-operation` enqueue; it becomes a task when it
  is delivered (`remove`/`dequeue`), with the enqueue line as its provenance. A delivered prompt that is then
  repeated by a user line (or a queued_command attachment) before any tool call is one task, not two.
- Repeated `uuid`s (resumed sessions) count once: within a file the repeat is skipped (duplicate_uuid); across
  files the first (source_file, source_line) wins (ingest.py). `isApiErrorMessage` lines are api_error skips.
- A typed task with no tool call is skipped (task no_tool_calls); one with no text (an image only) is no_text.

Speed: long lines (> 2 KB: tool results of MBs) never need a full parse. Their top-level `type` is read from the
raw bytes when every key before it holds a scalar (true of every version seen); progress/snapshot/system lines,
tool results and assistant lines without a tool_use are then classified from bytes, after a cheap truncation check
(ends in `}`, braces balance), without checking field types. Short lines are parsed (orjson is as fast as the checks).
"""

from __future__ import annotations

import re
from collections import deque

import orjson

from toolsel.data.formats import FileResult, Options, SubAgent, WrongType, decode_error, get, iter_lines

# Known non-conversation record types: skipped as `record_type:<type>`. Others: `unknown_record_type`.
KNOWN_TYPES = frozenset({
    "progress", "file-history-snapshot", "system", "summary", "custom-title", "ai-title", "last-prompt", "mode",
    "permission-mode", "cost-state", "tag", "agent-name", "pr-link", "attachment", "queue-operation",
})
_FAST_SKIP = frozenset(t.encode() for t in KNOWN_TYPES - {"queue-operation", "attachment"})
_SPAWN_TOOLS = frozenset({"Task", "Agent"})
_BYTES_FAST = 2048
_SLASH = ("<command-name>", "<command-message>", "<command-args>")
_LOCAL = ("<local-command-stdout>", "<local-command-stderr>", "<local-command-caveat>")
_SHELL = ("<bash-input>", "<bash-stdout>", "<bash-stderr>")
_COMPACT_TEXT = "This session is being continued from a previous conversation"
_REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.S)


def top_type(line: bytes) -> bytes | None:
    """The top-level `"type"` value read from bytes, or None when that is not certain (then parse).

    Callers trust it only for a line that ends in "}" with balanced braces (a cheap truncation check; braces
    inside strings can unbalance a valid line, which then just takes the full parse)."""
    pos = line.find(b'"type":"')
    if pos <= 0 or line[pos - 1] not in b",{":
        return None
    # Only scalars before it (no nested object/array opened) => the key is at depth 1.
    if line.find(b"{", 1, pos) != -1 or line.find(b"[", 0, pos) != -1:
        return None
    end = line.find(b'"', pos + 8)
    value = line[pos + 8:end]
    return None if end == -1 or b"\\" in value else value


class _Task:
    __slots__ = ("line", "key", "text", "session_id", "project", "timestamp", "tools", "seen", "spawns",
                 "tool_lines", "from_queue")

    def __init__(self, line, key, text, session_id, project, timestamp, from_queue=False):
        self.line, self.key, self.text = line, key, text
        self.session_id, self.project, self.timestamp = session_id, project, timestamp
        self.tools, self.seen, self.spawns, self.tool_lines = [], set(), [], 0
        self.from_queue = from_queue


def message_text(content) -> tuple[str, bool]:
    """(text of a user message, whether it carries an image). Raises WrongType on malformed blocks."""
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        raise WrongType(f"field 'message.content': expected str|list, got {type(content).__name__}")
    texts, image = [], False
    for block in content:
        if not isinstance(block, dict):
            raise WrongType(f"field 'message.content[]': expected object, got {type(block).__name__}")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise WrongType("field 'message.content[].text': expected str")
            texts.append(text)
        elif kind in ("image", "document"):
            image = True
    return "\n".join(texts), image


def non_task_reason(text: str) -> str | None:
    """Why a user text is not a typed task (None = it is one)."""
    head = text.lstrip()[:4096]
    if "<" not in head:  # every tag below starts with "<": the usual typed task costs two checks
        return "interrupt" if head.startswith("[Request interrupted by user") else (
            "compact_summary" if head.startswith(_COMPACT_TEXT) else None)
    if any(tag in head for tag in _SLASH):
        return "slash_command"
    if any(tag in head for tag in _LOCAL):
        return "local_command_output"
    if head.startswith("[Request interrupted by user"):
        return "interrupt"
    if head.startswith("<task-notification>"):
        return "task_notification"
    if head.startswith(_COMPACT_TEXT):
        return "compact_summary"
    if any(head.startswith(tag) for tag in _SHELL):
        return "shell_escape"
    return None


def clean_text(text: str) -> str:
    if "<system-reminder>" in text:
        text = _REMINDER.sub("", text)
    return text.strip()


class SessionReader:
    """State machine over one transcript file; `read()` returns its FileResult."""

    def __init__(self, path: str, display: str, opts: Options, digest):
        self.path, self.opts, self.digest = path, opts, digest
        self.result = FileResult(display, "claude_code")
        self.link = opts.include_subagent_tools
        self.task: _Task | None = None
        self.after_command = False
        self.uuids: set = set()
        self.queue: deque = deque()     # (line, text, session_id, timestamp) of enqueued prompts
        self.cwd = None

    def read(self) -> FileResult:
        result, link = self.result, self.link
        skipped, loads, on_user, on_assistant = result.skipped, orjson.loads, self.on_user, self.on_assistant
        lineno = 0
        with open(self.path, "rb") as handle:
            for lineno, line in iter_lines(handle, self.opts.max_line_bytes, self.digest):
                if line is None:
                    result.quarantine_line(lineno, "line_too_long", None, f"over {self.opts.max_line_bytes} bytes")
                    continue
                # orjson parses a short line about as fast as the byte checks run: only long lines take them.
                if len(line) > _BYTES_FAST and self.skipped_from_bytes(line):
                    continue
                try:
                    record = loads(line)
                except orjson.JSONDecodeError:  # a blank line is not JSON either: told apart only here
                    if not line.strip():
                        skipped["blank_line"] += 1
                    else:
                        reason, detail = decode_error(line)
                        result.quarantine_line(lineno, reason, line, detail)
                    continue
                if record.__class__ is not dict:
                    result.quarantine_line(lineno, "not_an_object", line, type(record).__name__)
                    continue
                # The hot record types are dispatched inline (same handlers as `dispatch`).
                kind = record.get("type")
                try:
                    if kind == "assistant":
                        on_assistant(lineno, record)
                    elif kind == "user":
                        on_user(lineno, record)
                    elif kind == "progress" and not link:
                        skipped["record_type:progress"] += 1
                    else:
                        self.dispatch(lineno, line, record)
                except (WrongType, TypeError, AttributeError, KeyError, ValueError) as err:
                    # A field of an unexpected shape: quarantined, never a crash.
                    result.quarantine_line(lineno, "wrong_type", line, f"{type(err).__name__}: {err}")
        result.lines = lineno
        self.close_task()
        for entry in self.queue:
            result.skip("queued_not_delivered")
        return result

    def skipped_from_bytes(self, line: bytes) -> bool:
        """A long line classified from its bytes (see the module docstring); True when it was counted as skipped."""
        kind, link, result = top_type(line), self.link, self.result
        if kind is None or line[-1:] != b"}" or line.count(b"{") != line.count(b"}"):
            return False
        if kind == b"assistant":
            if b'"type":"tool_use"' not in line:
                result.skip("api_error" if b'"isApiErrorMessage":true' in line else "assistant_no_tool_use")
                return True
        elif kind == b"user":
            if b'"type":"tool_result"' in line and not (link and b'"agentId"' in line):
                result.skip("tool_result")
                return True
        elif kind in _FAST_SKIP and not (link and kind == b"progress" and b'"agent_progress"' in line):
            result.skip("record_type:" + kind.decode())
            return True
        return False

    def dispatch(self, lineno: int, line: bytes, record: dict) -> None:
        kind = record.get("type")
        if not isinstance(kind, str):
            raise WrongType("field 'type': expected str")
        if kind == "user":
            self.on_user(lineno, record)
        elif kind == "assistant":
            self.on_assistant(lineno, record)
        elif kind == "queue-operation":
            self.on_queue(lineno, record)
        elif kind == "attachment":
            self.on_attachment(lineno, record)
        elif kind in KNOWN_TYPES:
            if kind == "progress" and self.link:
                self.link_progress(record)
            self.result.skip("record_type:" + kind)
        else:
            self.result.skip("unknown_record_type")
            self.result.unknown_types[kind[:40]] += 1

    def common(self, record: dict) -> tuple:
        """(uuid, is_sidechain, session_id, cwd, timestamp) with their types checked."""
        get_ = record.get
        uuid, sidechain, session_id, cwd, timestamp = (get_("uuid"), get_("isSidechain", False), get_("sessionId"),
                                                       get_("cwd"), get_("timestamp"))
        if not ((uuid is None or uuid.__class__ is str) and (session_id is None or session_id.__class__ is str)
                and (cwd is None or cwd.__class__ is str) and (timestamp is None or timestamp.__class__ is str)
                and (sidechain is None or sidechain.__class__ is bool)):  # inline: once per user/assistant line
            for key, types in (("uuid", str), ("sessionId", str), ("cwd", str), ("timestamp", str),
                               ("isSidechain", bool)):
                get(record, key, types)  # raises WrongType naming the field
        if cwd is not None:
            self.cwd = cwd
        return uuid, bool(sidechain), session_id, cwd, timestamp

    def seen_before(self, uuid: str | None) -> bool:
        if uuid is None:
            return False
        if uuid in self.uuids:
            return True
        self.uuids.add(uuid)
        return False

    def on_user(self, lineno: int, record: dict) -> None:
        result = self.result
        message = record.get("message")
        message = message if message.__class__ is dict else get(record, "message", dict) or {}
        content = message.get("content", "")
        if content.__class__ is list:
            for block in content:  # a plain loop: any(<genexpr>) costs more on this, the most common line
                if block.__class__ is dict and block.get("type") == "tool_result":
                    if self.link:
                        self.link_tool_result(record, record.get("sessionId"))
                    result.skipped["tool_result"] += 1
                    return None
        uuid, sidechain, session_id, cwd, timestamp = self.common(record)
        text, image = message_text(content)
        if self.seen_before(uuid):
            return result.skip("duplicate_uuid")
        if self.queue and not sidechain:
            self.drop_queued(text.strip())
        if sidechain:
            if self.link:
                self.subagent(record, session_id).prompt = self.subagent(record, session_id).prompt or text
            return result.skip("sidechain")
        if record.get("isMeta") and get(record, "isMeta", bool):
            return result.skip("meta")
        if record.get("isCompactSummary") and get(record, "isCompactSummary", bool):
            return result.skip("compact_summary")
        if "promptSource" in record or "origin" in record:
            origin = get(record, "origin", dict) or {}
            if get(record, "promptSource", str) not in (None, "typed") or origin.get("kind", "human") != "human":
                return result.skip("not_typed")
        reason = non_task_reason(text)
        if reason == "slash_command":
            self.close_task()
            self.after_command = True
        if reason is not None:
            return result.skip(reason)
        text = clean_text(text)
        if not text and not image:
            return result.skip("empty_message")
        if self.repeats_queued(text):
            return result.skip("queued_prompt_repeated")
        self.start_task(_Task(lineno, uuid, text, session_id, cwd or self.cwd, timestamp))

    def on_assistant(self, lineno: int, record: dict) -> None:
        result = self.result
        message = record.get("message")
        message = message if message.__class__ is dict else get(record, "message", dict) or {}
        content = message.get("content")
        if content.__class__ is not list:
            content = get(message, "content", (list, str)) or ()
        names = []
        for block in content if content.__class__ is list else ():
            if block.__class__ is dict and block.get("type") == "tool_use":
                name = block.get("name")
                if name.__class__ is not str or not name.strip():
                    raise WrongType("field 'message.content[].name': expected non-empty str")
                names.append((name.strip(), block.get("id"), block.get("input")))
        if not names:  # same rule as the byte-level classification of long lines
            return result.skip("api_error" if record.get("isApiErrorMessage") else "assistant_no_tool_use")
        uuid, sidechain, session_id, _, _ = self.common(record)
        if self.seen_before(uuid):
            return result.skip("duplicate_uuid")
        if sidechain:
            if not self.link:
                return result.skip("sidechain")
            sub = self.subagent(record, session_id)
            sub.lines += 1
            sub.tools.extend(name for name, _, _ in names if name not in sub.tools)
            return None
        task = self.task
        if task is None:
            return result.skip("tool_use_after_slash_command" if self.after_command else "tool_use_outside_task")
        task.tool_lines += 1
        for name, tool_id, tool_input in names:
            if name not in task.seen:
                task.seen.add(name)
                task.tools.append(name)
            if self.link and name in _SPAWN_TOOLS and isinstance(tool_id, str):
                task.spawns.append((len(task.tools), tool_id))
                prompt = tool_input.get("prompt") if isinstance(tool_input, dict) else None
                if isinstance(prompt, str):
                    result.prompt_links[(session_id, prompt.strip())] = tool_id
        return None

    def on_queue(self, lineno: int, record: dict) -> None:
        operation = get(record, "operation", str)
        if operation == "enqueue":
            content = get(record, "content", str)
            if content is not None:
                # Held, not counted, until delivered or dropped (then it is counted once).
                self.queue.append((lineno, content, get(record, "sessionId", str), get(record, "timestamp", str)))
                return
        elif operation in ("dequeue", "remove") and self.queue:
            # Task notifications are also delivered as ordinary user lines, so a removal most likely takes
            # the oldest prompt the user typed (seen in 2.1.39 traces); else the oldest entry.
            typed = [i for i, entry in enumerate(self.queue) if not entry[1].lstrip().startswith("<task-notification>")]
            index = typed[0] if typed else 0
            entry = self.queue[index]
            del self.queue[index]
            self.deliver(*entry)
        elif operation == "popAll":
            for _ in self.queue:
                self.result.skip("queued_not_delivered")
            self.queue.clear()
        self.result.skip("record_type:queue-operation")

    def on_attachment(self, lineno: int, record: dict) -> None:
        attachment = get(record, "attachment", dict) or {}
        prompt = attachment.get("prompt")
        if attachment.get("type") == "queued_command" and isinstance(prompt, str):
            text = clean_text(prompt)
            if self.repeats_queued(text):
                return self.result.skip("queued_prompt_repeated")
            self.queue.append((lineno, prompt, get(record, "sessionId", str), get(record, "timestamp", str)))
            return self.deliver(*self.queue.pop())
        return self.result.skip("record_type:attachment")

    def deliver(self, lineno: int, text: str, session_id, timestamp) -> None:
        # Delivered mid-turn: a non-task text (notification, queued slash command) does not end the current task.
        reason = non_task_reason(text) or ("slash_command" if text.lstrip().startswith("/") else None)
        text = clean_text(text)
        if reason is None and not text:
            reason = "empty_message"
        if reason is None and self.repeats_queued(text):
            reason = "queued_prompt_repeated"
        if reason is not None:
            return self.result.skip(reason)
        self.start_task(_Task(lineno, None, text, session_id, self.cwd, timestamp, from_queue=True))
        return None

    def drop_queued(self, text: str) -> None:
        """A held prompt that arrives as an ordinary user line was delivered by that line: count it once."""
        for index, (_, held, _, _) in enumerate(self.queue):
            if held.strip() == text:
                del self.queue[index]
                self.result.skip("queued_prompt_repeated")
                return

    def repeats_queued(self, text: str) -> bool:
        task = self.task
        return task is not None and task.from_queue and not task.tools and task.text == text

    def start_task(self, task: _Task) -> None:
        self.close_task()
        self.task, self.after_command = task, False

    def close_task(self) -> None:
        task, result = self.task, self.result
        self.task = None
        if task is None:
            return
        reason = None if task.text else "no_text"
        reason = reason or (None if task.tools else "no_tool_calls")
        if reason is not None:
            result.tasks_skipped[reason] += 1
            result.skip("task_" + reason)
            result.skip("tool_use_of_skipped_task", task.tool_lines)
            return
        result.add_example(self.opts, line=task.line, sub=0, text=task.text, tools=task.tools,
                           session_id=task.session_id, project=task.project, timestamp=task.timestamp,
                           key=task.key, lines=1 + task.tool_lines, spawns=task.spawns)

    # -- subagent linking (include_subagent_tools) --
    def subagent(self, record: dict, session_id) -> SubAgent:
        agent_id = get(record, "agentId", str)
        key = (session_id, agent_id)
        if key not in self.result.subagents:
            self.result.subagents[key] = SubAgent(session_id, agent_id)
        return self.result.subagents[key]

    def link_progress(self, record: dict) -> None:
        data = record.get("data")
        if isinstance(data, dict) and data.get("type") == "agent_progress":
            agent_id, parent = data.get("agentId"), record.get("parentToolUseID")
            if isinstance(agent_id, str) and isinstance(parent, str):
                self.result.agent_links[(record.get("sessionId"), agent_id)] = parent

    def link_tool_result(self, record: dict, session_id) -> None:
        extra = record.get("toolUseResult")
        content = record["message"]["content"]
        agent_id = extra.get("agentId") if isinstance(extra, dict) else None
        if isinstance(agent_id, str):
            for block in content:
                if isinstance(block, dict) and isinstance(block.get("tool_use_id"), str):
                    self.result.agent_links[(session_id, agent_id)] = block["tool_use_id"]


def read_claude_code(path: str, display: str, opts: Options, digest) -> FileResult:
    """Read one transcript file; `agent-acompact-*` compaction workers are counted and skipped whole."""
    name = display.replace("\\", "/").rsplit("/", 1)[-1]
    if name.startswith("agent-acompact-"):
        result = FileResult(display, "claude_code")
        with open(path, "rb") as handle:
            for lineno, _ in iter_lines(handle, opts.max_line_bytes, digest):
                result.lines = lineno
        result.skip("compaction_worker_file", result.lines)
        return result
    return SessionReader(path, display, opts, digest).read()


__all__ = ["read_claude_code", "top_type", "non_task_reason", "message_text"]
