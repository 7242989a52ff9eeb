"""Brief full-parameter pretraining of the embedded tiny model on unlabeled task text.

A random-weight base would make the default run's LoRA meaningless, so the base stage teaches the tiny model the
language of the tasks first, with the same block-diffusion objective the fine-tune uses (plus the encoder AR loss):
the encoder reads a prefix of a task text, the decoder denoises the continuation on a canvas, `<eos>`-filled as in
fine-tuning. Only the training split's task texts are used, never their tool lists, never valid or test.
"""

from __future__ import annotations

import random
from functools import partial

import mlx.core as mx
from mlx.utils import tree_flatten

from toolsel.train.batches import BatchStream, Example, special_id
from toolsel.train.loop import TrainArgs, train
from toolsel.train.lora import prepare_for_training
from toolsel.train.objective import diffusion_loss
from toolsel.train.optim import build_optimizer


ECHO_SYSTEM = "Repeat the user's message."


def text_examples(tokenizer, texts: list[str], canvas_length: int, max_prompt_tokens: int, seed: int) -> list[Example]:
    """Two examples per text with at least two tokens, both from the text alone (seeded):

    - continuation: `<bos>` + a prefix of the text -> the next tokens, `<eos>`-filled; the cut falls in the first half
      of short texts so that most canvases also teach where a text ends;
    - echo: the text as a user turn in the model's own chat template -> its first tokens, then `<turn|>`, then
      `<eos>` fill; this teaches the answer canvas's layout (it starts right after the generation prompt, ends with
      `<turn|>`) without any tool list.
    """
    from toolsel.model.chat import encode_prompt, prompt_renderer

    bos, eos, end = (special_id(tokenizer, t) for t in ("<bos>", "<eos>", "<turn|>"))
    render = prompt_renderer(tokenizer, ECHO_SYSTEM)
    rng = random.Random(f"pretrain:{seed}")
    examples = []
    for text in texts:
        text = text.strip()  # the chat template trims the user turn; the echo target must match it
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) < 2:
            continue
        cut = rng.randint(1, max(1, min(len(ids) - 1, max_prompt_tokens - 1, len(ids) // 2 + 1)))
        continuation = ids[cut:cut + canvas_length]
        examples.append(Example(tuple([bos] + ids[:cut]), tuple(_fill(continuation, canvas_length, eos))))
        prompt = encode_prompt(tokenizer, render(text))
        if len(prompt) <= max_prompt_tokens:
            echo = ids[:canvas_length - 1] + [end]
            examples.append(Example(tuple(prompt), tuple(_fill(echo, canvas_length, eos))))
    return examples


def tool_menus(tool_names: list[str], count: int, seed: int) -> list[str]:
    """`count` seeded shuffles of "Available tools: A, B, ...": the candidate list as prompts show it, no labels."""
    rng = random.Random(f"menus:{seed}")
    names, menus = sorted(set(tool_names)), []
    for _ in range(count if names else 0):
        rng.shuffle(names)
        menus.append("Available tools: " + ", ".join(names))
    return menus


def _fill(ids: list[int], length: int, eos: int) -> list[int]:
    return ids + [eos] * (length - len(ids))


def pretrain(model, examples: list[Example], tokenizer, *, steps: int, batch_size: int, lr: float, seed: int,
             encoder_loss_weight: float, shards: int = 1,
             warmup_steps: int = 10) -> tuple[dict[str, mx.array], list[dict]]:
    """Train every weight (frozen buffers aside); return (weights in MLX spelling, per-step history)."""
    mx.random.seed(seed)
    prepare_for_training(model, method="full")
    optimizer = build_optimizer(lr=lr, lr_min=lr / 10, warmup_steps=warmup_steps, total_steps=steps)
    pad = special_id(tokenizer, "<pad>")
    batches = BatchStream(examples, batch_size, pad, seed=seed)
    loss_fn = partial(diffusion_loss, encoder_loss_weight=encoder_loss_weight)
    state = train(model, optimizer, loss_fn, batches, [], TrainArgs(steps=steps, seed=seed, shards=shards))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    return weights, state.history
