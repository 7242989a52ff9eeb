"""Plain helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil


def padded_tokenizer(src, out_dir, size=512):
    """The shared test tokenizer padded with filler tokens to exactly `size`: stock generate's detokenizer fails
    on ids past the tokenizer, and a random start canvas draws from the whole model vocabulary."""
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(src, out_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out_dir))
    tokenizer.add_tokens([f"<unused{i}>" for i in range(size - len(tokenizer))])
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def rendered_record(tokenizer, record_id: str, user: str, tools: list[str]) -> dict:
    """One `rendered` record as the render stage writes it, for a task text `user` answered by `tools`."""
    from toolsel.model.chat import encode_prompt, encode_response, format_response, render_prompt

    prompt = render_prompt(tokenizer, "You route tools.", user)
    response = format_response(tools)
    return {"id": record_id, "prompt": prompt, "response": response, "tools": tools,
            "prompt_tokens": len(encode_prompt(tokenizer, prompt)),
            "response_tokens": len(encode_response(tokenizer, response)), "truncated": False}
