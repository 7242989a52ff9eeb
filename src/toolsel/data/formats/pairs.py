"""Already-rendered pairs `{"prompt": ..., "response": ...}` (response: `- Tool` lines ending `<turn|>`).

If the prompt is a rendered chat prompt (`<|turn>user\\n...<turn|>`), the task text is the last user turn, minus
a trailing candidate-tool block (a header line ending in ":" followed only by `- Name` lines), which the render
stage appends; a plain prompt is taken as the task text.
"""

from __future__ import annotations

import re

from toolsel.data.formats import FileResult, Options, WrongType, get, iter_records

_USER_TURN = "<|turn>user\n"
_END_TURN = "<turn|>"
_TOOL_LINE = re.compile(r"^- (\S.*)$")
_CANDIDATES = re.compile(r"\n[^\n]*:[ \t]*(?:\n- [^\n]+)+\s*\Z")


def task_text(prompt: str) -> str:
    """The user's task text of a (possibly rendered) prompt."""
    if prompt.startswith("<bos>"):
        prompt = prompt[len("<bos>"):]
    start = prompt.rfind(_USER_TURN)
    if start == -1:
        return prompt.strip()
    body = prompt[start + len(_USER_TURN):]
    end = body.find(_END_TURN)
    body = body if end == -1 else body[:end]
    return _CANDIDATES.sub("", "\n" + body).strip()


def response_tools(response: str) -> list[str] | None:
    """Tool names of a `- Tool` response ending `<turn|>`; None when it is not in that format."""
    body = response.strip()
    if not body.endswith(_END_TURN):
        return None
    tools: list[str] = []
    for raw in body[: -len(_END_TURN)].splitlines():
        if not raw.strip():
            continue
        match = _TOOL_LINE.match(raw.strip())
        if match is None:
            return None
        name = match.group(1).strip()
        if name not in tools:
            tools.append(name)
    return tools


def read_pairs(path: str, display: str, opts: Options, digest) -> FileResult:
    result = FileResult(display, "pairs")
    for lineno, line, record in iter_records(result, path, opts.max_line_bytes, digest):
        try:
            prompt, response = get(record, "prompt", str), get(record, "response", str)
            if prompt is None or response is None:
                raise WrongType("fields 'prompt' and 'response': required str")
        except WrongType as err:
            result.quarantine_line(lineno, "wrong_type", line, str(err))
            continue
        tools = response_tools(response)
        if tools is None:
            result.quarantine_line(lineno, "bad_response", response, "not '- Tool' lines ending <turn|>")
            continue
        text = task_text(prompt)
        reason = "no_text" if not text else ("no_tool_calls" if not tools else None)
        if reason:
            result.tasks_skipped[reason] += 1
            result.skip("task_" + reason)
            continue
        result.add_example(opts, line=lineno, sub=0, text=text, tools=tools, session_id=None, project=None,
                           timestamp=None, key=None, lines=1)
    return result
