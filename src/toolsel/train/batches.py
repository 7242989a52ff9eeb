"""Rendered records -> token ids -> batches: prompts bucketed by length and LEFT-padded, a fixed-length canvas.

mlx-vlm takes one RoPE offset per batch, so prompts are padded on the left (reference.md). Prompt lengths are
rounded up to a multiple of `bucket`, so only a few distinct shapes ever reach the model. The shuffled order is a
pure function of (seed, epoch), and a `position` (epoch, index) says where the stream stands: a resumed run
continues with exactly the batch an uninterrupted run would have seen next.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Iterator

import mlx.core as mx


@dataclass(frozen=True)
class Example:
    prompt: tuple[int, ...]  # starts with one <bos>
    canvas: tuple[int, ...]  # response ids ending <turn|>, then <eos> fill to canvas_length


def special_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"tokenizer has no {token!r} token")
    return int(token_id)


def encode_records(records: Iterable[dict], tokenizer, canvas_length: int) -> list[Example]:
    """Tokenize rendered records (`prompt`, `response`); a response longer than the canvas is an error with a count."""
    from toolsel.model.chat import build_canvas, encode_prompts, encode_responses

    records = list(records)
    eos_id = special_id(tokenizer, "<eos>")
    responses = encode_responses(tokenizer, [r["response"] for r in records])
    too_long = [r.get("id", "?") for r, ids in zip(records, responses) if len(ids) > canvas_length]
    if too_long:
        raise ValueError(f"{len(too_long)} responses are longer than the canvas ({canvas_length} tokens), "
                         f"e.g. id {too_long[0]}: raise canvas_length or drop them at render")
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in records])
    return [Example(tuple(p), tuple(build_canvas(ids, canvas_length, eos_id))) for p, ids in zip(prompts, responses)]


def bucket_length(length: int, bucket: int) -> int:
    return -(-length // bucket) * bucket


def collate(examples: list[Example], pad_id: int, bucket: int) -> dict[str, mx.array]:
    """The objective's batch dict: `prompt` [B, P] left-padded with pad_id, `prompt_mask` [B, P], `canvas` [B, C]."""
    width = bucket_length(max(len(e.prompt) for e in examples), bucket)
    prompts, masks = [], []
    for e in examples:
        pad = width - len(e.prompt)
        prompts.append([pad_id] * pad + list(e.prompt))
        masks.append([0] * pad + [1] * len(e.prompt))
    return {
        "prompt": mx.array(prompts, dtype=mx.int32),
        "prompt_mask": mx.array(masks, dtype=mx.int32),
        "canvas": mx.array([list(e.canvas) for e in examples], dtype=mx.int32),
    }


def epoch_batches(examples: list[Example], batch_size: int, bucket: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch as lists of example indices: shuffle, group by prompt bucket, cut into batches, shuffle batches.

    Deterministic in (seed, epoch); every example appears exactly once per epoch; a bucket's last batch may be short.
    """
    rng = random.Random(f"{seed}:{epoch}")  # string seeds hash with sha512: stable across runs and platforms
    order = list(range(len(examples)))
    rng.shuffle(order)
    by_bucket: dict[int, list[int]] = {}
    for i in order:
        by_bucket.setdefault(bucket_length(len(examples[i].prompt), bucket), []).append(i)
    batches = [group[s:s + batch_size] for _, group in sorted(by_bucket.items())
               for s in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


class BatchStream:
    """Endless shuffled training batches with a resumable position {"epoch", "index"} (the next batch to yield)."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, *, seed: int, bucket: int = 32,
                 position: dict | None = None):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.seed, self.bucket = seed, bucket
        position = position or {"epoch": 0, "index": 0}
        self.epoch, self.index = int(position["epoch"]), int(position["index"])
        self._plan = epoch_batches(examples, batch_size, bucket, seed, self.epoch)

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def __iter__(self) -> Iterator[dict[str, mx.array]]:
        return self

    def __next__(self) -> dict[str, mx.array]:
        if self.index >= len(self._plan):
            self.epoch, self.index = self.epoch + 1, 0
            self._plan = epoch_batches(self.examples, self.batch_size, self.bucket, self.seed, self.epoch)
        batch = collate([self.examples[i] for i in self._plan[self.index]], self.pad_id, self.bucket)
        self.index += 1
        return batch


def fixed_batches(examples: list[Example], batch_size: int, pad_id: int, bucket: int = 32) -> list[dict]:
    """Validation batches: every example once, in a fixed order (sorted by prompt length so padding stays small)."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].prompt), i))
    return [collate([examples[i] for i in order[s:s + batch_size]], pad_id, bucket)
            for s in range(0, len(order), batch_size)]


def batch_tokens(batch: dict[str, mx.array]) -> int:
    """Tokens the model processes for a batch: real prompt tokens plus the whole canvas (for tokens/s)."""
    return int(batch["prompt_mask"].sum().item()) + batch["canvas"].size
