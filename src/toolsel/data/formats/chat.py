"""OpenAI-style chat JSONL, one conversation per line: `{"messages": [...], "tools": [...]}`.

Each `user` message with text is a typed task; its tools are the `tool_calls[].function.name` (or legacy
`function_call.name`) of the assistant messages up to the next user message, unique, in order of first use.
A line is `used` when at least one of its tasks became an example; otherwise it is skipped by the reason of its
tasks (`chat_no_user_message`, or `chat_no_kept_task`).
"""

from __future__ import annotations

from toolsel.data.formats import FileResult, Options, WrongType, get, iter_records


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise WrongType(f"field 'messages[].content': expected str|list, got {type(content).__name__}")


def _call_names(message: dict) -> list[str]:
    names = []
    calls = get(message, "tool_calls", list) or []
    legacy = get(message, "function_call", dict)
    for call in calls + ([{"function": legacy}] if legacy else []):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise WrongType("field 'messages[].tool_calls[].function.name': expected non-empty str")
        names.append(name.strip())
    return names


def conversation_tasks(record: dict) -> list[tuple[int, str, list[str]]]:
    """[(user message index, task text, tools)] of one conversation; raises WrongType on a malformed field."""
    messages = get(record, "messages", list)
    if messages is None:
        raise WrongType("field 'messages': required list")
    tasks: list = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise WrongType(f"field 'messages[{index}]': expected object")
        role = message.get("role")
        if role == "user":
            tasks.append((index, _content_text(message.get("content")).strip(), []))
        elif role == "assistant" and tasks:
            tools = tasks[-1][2]
            tools.extend(name for name in _call_names(message) if name not in tools)
    return tasks


def read_chat(path: str, display: str, opts: Options, digest) -> FileResult:
    result = FileResult(display, "chat")
    for lineno, line, record in iter_records(result, path, opts.max_line_bytes, digest):
        try:
            tasks = conversation_tasks(record)
            session_id = get(record, "id", str)
        except WrongType as err:
            result.quarantine_line(lineno, "wrong_type", line, str(err))
            continue
        kept = 0
        for index, text, tools in tasks:
            reason = "no_text" if not text else ("no_tool_calls" if not tools else None)
            if reason:
                result.tasks_skipped[reason] += 1
                continue
            kept += 1
            result.add_example(opts, line=lineno, sub=index, text=text, tools=tools, session_id=session_id,
                               project=None, timestamp=None, key=None, lines=1 if kept == 1 else 0)
        if not kept:
            result.skip("chat_no_kept_task" if tasks else "chat_no_user_message")
    return result
