"""The one place that knows the prompt/response format: chat template, response lines, token ids, canvas.

A training example is `encode_prompt(prompt)` (one `<bos>`, then the chat-template text ending in the empty
thought channel `<|channel>thought\\n<channel|>`) and a canvas `encode_response(response)` (`- Tool` lines, then
`<turn|>`) filled with `<eos>` to `canvas_length`. The boundary is exact: prompt ids + response ids equal the
ids of the concatenated text, so nothing of the turn header leaks into the canvas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers takes seconds to import: only load_tokenizer needs it
    from transformers import PreTrainedTokenizerBase

END_OF_TURN = "<turn|>"
TOOL_LINE_PREFIX = "- "
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The model directory's own tokenizer and chat template, from local files only (no hub, no remote code)."""
    model_dir = Path(model_dir).expanduser()
    missing = [name for name in _TOKENIZER_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir}: not a model directory with a tokenizer (missing {', '.join(missing)})")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template (chat_template.jinja missing)")
    for token in ("bos_token", "eos_token", "pad_token"):
        if getattr(tokenizer, token) is None:
            raise ValueError(f"{model_dir}: the tokenizer defines no {token}")
    return tokenizer


def read_canvas_length(model_dir: str | Path) -> int:
    """`canvas_length` from the model directory's config.json (top level, as DiffusionGemma writes it)."""
    path = Path(model_dir).expanduser() / "config.json"
    config = json.loads(path.read_text("utf-8"))
    value = config.get("canvas_length", config.get("text_config", {}).get("canvas_length"))
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: no positive integer canvas_length")
    return value


def render_prompt(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> str:
    """The chat-template text for (system, user) with the generation prompt, thinking off, `<bos>` stripped."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,
                                         tokenize=False)
    return text.removeprefix(tokenizer.bos_token)


def prompt_renderer(tokenizer: PreTrainedTokenizerBase, system: str, check_every: int = 1024):
    """A fast `render_prompt(tokenizer, system, user)` for many users: the template rendered once around a
    sentinel, the (stripped) user text put in its place. The first 16 calls and every `check_every`-th are
    compared with the real template; a difference raises (the template does more than trim the text)."""
    sentinel = "\x00toolsel-user\x00"
    prefix, found, suffix = render_prompt(tokenizer, system, sentinel).partition(sentinel)
    if not found:
        raise ValueError("the chat template does not place the user text verbatim; render with render_prompt")
    calls = 0

    def render(user: str) -> str:
        nonlocal calls
        text = prefix + user.strip() + suffix
        if calls < 16 or calls % check_every == 0:
            expected = render_prompt(tokenizer, system, user)
            if text != expected:
                raise ValueError(f"fast prompt rendering differs from the chat template: {text!r} != {expected!r}")
        calls += 1
        return text

    return render


def format_response(tools: list[str]) -> str:
    """`- Tool` lines joined by newlines, then `<turn|>`: "- Bash\\n- Read<turn|>"."""
    return "\n".join(TOOL_LINE_PREFIX + tool for tool in tools) + END_OF_TURN


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of `prompt` with exactly one leading `<bos>` (one already in the text is not doubled)."""
    return encode_prompts(tokenizer, [prompt])[0]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """`encode_prompt` of many prompts in one (parallel) tokenizer call."""
    bos = tokenizer.bos_token_id
    encoded = []
    for ids in _encode(tokenizer, prompts):
        start = 0
        while start < len(ids) and ids[start] == bos:
            start += 1
        encoded.append([bos] + ids[start:])
    return encoded


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of the response text (no special tokens added; `<turn|>` in the text is its own token)."""
    return _encode(tokenizer, [response])[0]


def encode_responses(tokenizer: PreTrainedTokenizerBase, responses: list[str]) -> list[list[int]]:
    """`encode_response` of many responses in one (parallel) tokenizer call."""
    return _encode(tokenizer, responses)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def build_canvas(response_ids: list[int], canvas_length: int, eos_id: int) -> list[int]:
    """The clean target canvas: response ids then `<eos>` up to `canvas_length`. Raises if they do not fit."""
    if len(response_ids) > canvas_length:
        raise ValueError(f"response of {len(response_ids)} tokens does not fit a canvas of {canvas_length}")
    return list(response_ids) + [eos_id] * (canvas_length - len(response_ids))
