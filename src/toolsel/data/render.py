"""Turn split examples into DiffusionGemma {prompt, response} pairs with token counts.

User turn = the task text, a blank line, then "Available tools: A, B, C" (the candidate list: tools of the
TRAIN split by example frequency, ties by name, the same list in every split so nothing leaks from valid/test).
Limits, both counted:
- a response longer than the canvas is quarantined: we train one canvas block per example, not multi-block;
- a prompt over `max_prompt_tokens` is truncated (`truncate`: the head of the task text is kept, the template
  and candidate list stay intact) or quarantined (`quarantine`).
Task text that spells a control token (`<bos>`, `<turn|>`, `<|image|>`...) is defused with a zero-width space after
its `<`, so it tokenizes as the text it is, never as the control token (counted as `control_tokens_defused`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Callable

from toolsel.model.chat import encode_prompts, encode_responses, format_response, prompt_renderer
from toolsel.progress import bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OVERFLOW_POLICIES = ("truncate", "quarantine")
_CHUNK = 4096  # examples per batched tokenizer call


def candidate_tools(train: list[dict]) -> list[tuple[str, int]]:
    """(tool, number of train examples using it), most frequent first, ties by name."""
    counts = Counter(tool for record in train for tool in set(record["tools"]))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def user_message(task: str, candidates: list[str]) -> str:
    """The user turn: the task, then the candidate tools (omitted when there are none)."""
    task = task.strip()
    return f"{task}\n\nAvailable tools: {', '.join(candidates)}" if candidates else task


def control_token_defuser(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], tuple[str, int]]:
    """text -> (text with every special-token literal broken by a zero-width space after its `<`, hits)."""
    specials = {t for t in [*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()] if t.startswith("<")}
    if not specials:
        return lambda text: (text, 0)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))
    return lambda text: pattern.subn(lambda m: "<\u200b" + m.group(0)[1:], text)


class PromptTooLong(ValueError):
    """Even an empty task does not fit: the system prompt and candidate list alone exceed the limit."""


def _truncate(task: str, fits: Callable[[str], bool]) -> str:
    """The longest head of `task` (in characters) whose prompt fits; binary search, O(log n) encodings."""
    low, high = 0, len(task)  # fits(task[:low]) holds, fits(task[:high + 1]) fails
    if not fits(""):
        raise PromptTooLong("the system prompt and candidate tool list alone exceed render.max_prompt_tokens")
    high -= 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(task[:middle]):
            low = middle
        else:
            high = middle - 1
    return task[:low].rstrip()


def render_split(records: list[dict], tokenizer: PreTrainedTokenizerBase, *, system_prompt: str,
                 candidates: list[str], canvas_length: int, max_prompt_tokens: int, overflow: str,
                 split: str = "") -> tuple[list[dict], list[dict], dict]:
    """Return (rendered records, quarantined records, counts) for one split, in input order."""
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {overflow!r}")
    render = prompt_renderer(tokenizer, system_prompt)
    defuse = control_token_defuser(tokenizer)

    def n_prompt_tokens(task: str) -> int:
        return len(encode_prompts(tokenizer, [render(user_message(task, candidates))])[0])

    rendered, quarantined = [], []
    counts = Counter(examples_in=len(records))
    progress = bar(total=len(records), desc=f"render {split}".strip(), unit="ex")
    for start in range(0, len(records), _CHUNK):
        chunk = records[start:start + _CHUNK]
        defused = [defuse(r["prompt"]) for r in chunk]
        tasks = [task for task, _ in defused]
        counts["control_tokens_defused"] += sum(1 for _, hits in defused if hits)
        prompts = [render(user_message(task, candidates)) for task in tasks]
        responses = [format_response(r["tools"]) for r in chunk]
        prompt_lens = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
        response_lens = [len(ids) for ids in encode_responses(tokenizer, responses)]
        for record, task, prompt, response, n_prompt, n_response in zip(chunk, tasks, prompts, responses,
                                                                       prompt_lens, response_lens):
            problem = {"split": split, "id": record["id"], "prompt_tokens": n_prompt, "response_tokens": n_response}
            if n_response > canvas_length:
                quarantined.append({**problem, "reason": "response_too_long", "limit": canvas_length})
                continue
            truncated = n_prompt > max_prompt_tokens
            if truncated and overflow == "quarantine":
                quarantined.append({**problem, "reason": "prompt_too_long", "limit": max_prompt_tokens})
                continue
            if truncated:
                task = _truncate(task, lambda head: n_prompt_tokens(head) <= max_prompt_tokens)
                prompt = render(user_message(task, candidates))
                n_prompt = n_prompt_tokens(task)
            counts["truncated"] += truncated
            counts["outside_candidates"] += not set(record["tools"]) <= set(candidates)
            rendered.append({"id": record["id"], "prompt": prompt, "response": response, "tools": record["tools"],
                             "prompt_tokens": n_prompt, "response_tokens": n_response, "truncated": truncated})
        progress.update(len(chunk))
    progress.close()
    return rendered, quarantined, _split_counts(counts, rendered, quarantined)


def _split_counts(counts: Counter, rendered: list[dict], quarantined: list[dict]) -> dict:
    reasons = Counter(q["reason"] for q in quarantined)
    prompt_tokens = [r["prompt_tokens"] for r in rendered]
    response_tokens = [r["response_tokens"] for r in rendered]
    return {
        "examples_in": counts["examples_in"],
        "rendered": len(rendered),
        "truncated": counts["truncated"],
        "control_tokens_defused": counts["control_tokens_defused"],
        "quarantined": {"response_too_long": reasons["response_too_long"],
                        "prompt_too_long": reasons["prompt_too_long"]},
        "tools_outside_candidates": counts["outside_candidates"],
        "prompt_tokens": {"max": max(prompt_tokens, default=0),
                          "mean": round(sum(prompt_tokens) / len(prompt_tokens), 3) if prompt_tokens else 0.0},
        "response_tokens": {"max": max(response_tokens, default=0),
                            "mean": round(sum(response_tokens) / len(response_tokens), 3) if response_tokens else 0.0},
    }
