"""Batched, bucketed block-diffusion decoding: many prompts per forward, with the reference sampler's semantics.

Prompts are grouped into length buckets (multiples of `bucket` tokens), LEFT-padded with a key mask (RoPE is
relative, so left padding is exact up to fp32 rounding, ~1e-5 on the logits), and decoded on one fixed full canvas.
A bucket's prompts form queues (at most `QUEUE_BATCHES` batches' worth each) that stream through a batch of
`batch_size` canvas slots: a canvas that stops leaves, and the queue's next prompt is prefilled and joins at its own
first step (`toolsel.eval.sampler`). A slot costs little; a decoder step costs the same ~2,300 mlx ops however few
rows it holds, so keeping the slots full (instead of running each batch down to its slowest canvas) is what saves
time. The decoder runs eagerly (on CPU `mx.compile` measured no faster), so no prompt shape is ever compiled;
bucketing keeps the distinct shapes few for a compiled or GPU path. On a CPU several queues ("lanes") step in
lockstep, each on its own MLX stream (thread), with one evaluation per step.

A queue's rows, and so every row's neighbours and padding, depend on the prompts, `batch_size` and `bucket` only,
never on the lane count or timing: the same inputs and params give the same outputs on any machine. Randomness is
per example (`sampler.KeyStreams`), so a batch without padding reproduces mlx-vlm's stock `generate(..., seed=...)`
token for token, and one example's early stop cannot change another example's draws.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_vlm.models.diffusion_gemma.language import _cache_offset, _cache_state

from toolsel.allocator import roomy_buffer_cache
from toolsel.eval.kernels import uses_fast_eval_kernels
from toolsel.eval.sampler import (SAMPLERS, KeyStreams, SamplerConfig, _Lane, confidence_mask,  # noqa: F401
                                  denoise, denoise_lanes, entropy_bound_mask, example_seed, token_entropy,
                                  token_probability)
from toolsel.streams import cpu_streams, on_stream
from toolsel.train.fast import banded_prefill

QUEUE_BATCHES = 4  # a queue holds at most this many batches' worth of one bucket's prompts


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # the final argmax canvas, full canvas length
    steps: int  # denoiser forward passes this canvas used


class _EncoderView:
    """What the decoder reads from one layer's encoder cache (keys/values in time order, offset), row-selectable."""

    def __init__(self, keys: mx.array, values: mx.array, offset: int):
        self.keys, self.values, self.offset = keys, values, offset

    @property
    def decoder_state(self):
        return self.keys, self.values


class ModelDenoiser:
    """The mlx-vlm DiffusionGemma decoder over a filled encoder cache (the calls the stock sampler makes).

    Self-conditioning is passed as embeddings, which is what mlx-vlm computes from the logits itself when the
    embedding is quantized (same ops, here): a batch can then hold rows at their first step, whose signal is the
    zeros the decoder uses for "none", beside rows that have one."""

    def __init__(self, model, cache, masks):
        self.model, self.masks = model, masks
        self.cache = [c if isinstance(c, _EncoderView) else _EncoderView(*_cache_state(c), _cache_offset(c))
                      for c in cache]
        self.context = model.diffusion_prepare_self_conditioning()  # the float embedding; None when quantized
        self.fast = uses_fast_eval_kernels(model)  # toolsel.eval.kernels: sampler softmax from one fast exp pass

    def logits(self, canvas, self_conditioning):
        if self.context is not None or self_conditioning is None:
            return self.model.diffusion_decoder_logits(canvas, cache=self.cache, self_conditioning=self_conditioning,
                                                       decoder_attention_mask=self.masks)
        decoder = self.model.model.decoder  # diffusion_decoder_logits would pass them on as logits
        hidden = decoder(canvas, cache=self.cache, decoder_attention_mask=self.masks,
                         self_conditioning_embeddings=self_conditioning)
        return self.model._softcap(decoder.embed_tokens.as_linear(hidden))

    def self_conditioning(self, processed_logits):
        if self.context is not None:
            return self.model.diffusion_self_conditioning(processed_logits, self.context)
        return self.self_conditioning_from_probs(mx.softmax(processed_logits, axis=-1, precise=True))

    def self_conditioning_from_probs(self, probs):
        """The self-conditioning embeddings given softmax(processed) (mlx-vlm's two paths: a float embedding's
        `diffusion_self_conditioning`, a quantized one's `_embed_canvas`)."""
        decoder = self.model.model.decoder
        embed = decoder.embed_tokens
        if self.context is not None:
            weight = self.context
            return (probs.astype(weight.dtype) @ weight).astype(weight.dtype) * decoder.embed_scale
        dtype = self.embedding_dtype
        soft = mx.quantized_matmul(probs.astype(dtype), embed.weight, embed.scales, embed.biases, transpose=False,
                                   group_size=embed.group_size, bits=embed.bits, mode=getattr(embed, "mode", "affine"))
        return soft.astype(dtype) * decoder.embed_scale

    @property
    def embedding_dtype(self):
        embed = self.model.model.decoder.embed_tokens
        return embed.scales.dtype if isinstance(embed, nn.QuantizedEmbedding) else embed.weight.dtype

    def blank_self_conditioning(self, rows: int) -> mx.array:
        """A first step's signal: the decoder's own stand-in for none (zeros in the embedding dtype)."""
        shape = (rows, int(self.model.config.canvas_length), int(self.model.config.text_config.hidden_size))
        return mx.zeros(shape, dtype=self.embedding_dtype)

    def select(self, rows):
        cache = [_EncoderView(c.keys[rows], c.values[rows], c.offset) for c in self.cache]
        masks = {k: (None if m is None else m[rows]) for k, m in self.masks.items()}
        return ModelDenoiser(self.model, cache, masks)

    def extend(self, other: "ModelDenoiser") -> "ModelDenoiser":
        """These rows, then `other`'s (the same padded prompt length: same cache shapes and RoPE offset)."""
        cache = []
        for mine, theirs in zip(self.cache, other.cache):
            if mine.offset != theirs.offset or mine.keys.shape[2:] != theirs.keys.shape[2:]:
                raise ValueError("rows of different prompt lengths cannot share a batch")
            cache.append(_EncoderView(mx.concatenate([mine.keys, theirs.keys]),
                                      mx.concatenate([mine.values, theirs.values]), mine.offset))
        masks = {k: _concat_masks(self.masks[k], other.masks[k], self.rows, other.rows) for k in self.masks}
        return ModelDenoiser(self.model, cache, masks)

    @property
    def rows(self) -> int:
        return int(self.cache[0].keys.shape[0])


def _concat_masks(mine, theirs, my_rows: int, their_rows: int):
    """Row-concatenate two decoder masks; None (nothing masked) becomes all-True beside a real mask."""
    if mine is None and theirs is None:
        return None
    shape = (mine if mine is not None else theirs).shape[1:]
    mine = mx.ones((my_rows, *shape), dtype=mx.bool_) if mine is None else mine
    theirs = mx.ones((their_rows, *shape), dtype=mx.bool_) if theirs is None else theirs
    return mx.concatenate([mine, theirs])


def bucket_length(length: int, bucket: int) -> int:
    return -(-length // bucket) * bucket


def plan_queues(lengths: Sequence[int], bucket: int, size: int) -> list[list[int]]:
    """Indices grouped by padded length into queues of at most `size`, in input order inside each; deterministic.
    The biggest work (rows x length) comes first, so lanes that pick queues as they free up end close together."""
    buckets: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        buckets.setdefault(bucket_length(length, bucket), []).append(i)
    queues = [(padded, members[start:start + size]) for padded, members in sorted(buckets.items())
              for start in range(0, len(members), size)]
    queues.sort(key=lambda q: (-len(q[1]) * q[0], q[0], q[1][0]))
    return [members for _, members in queues]


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[mx.array, mx.array | None]:
    """[B, length] int32 ids left-padded with pad_id, and the key mask (None when nothing is padded)."""
    ids = np.full((len(prompts), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), length), dtype=bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = True
    return mx.array(ids), (None if mask.all() else mx.array(mask))


def prefill(model, prompts: Sequence[Sequence[int]], *, pad_id: int, length: int | None = None) -> ModelDenoiser:
    """Left-pad to `length` (default: the longest prompt) and prefill the encoder: the rows' denoiser."""
    length = length or max(len(p) for p in prompts)
    ids, mask = left_pad(prompts, length, pad_id)
    with banded_prefill():  # fast kernels: sliding layers attend in O(L * window), not O(L^2)
        cache = model.diffusion_prefill_cache(ids, attention_mask=mask, cache=model.make_cache(), pixel_values=None,
                                              mm_token_type_ids=None, prefill_step_size=None, chunk_prefill=False)
    canvas_length = int(model.config.canvas_length)
    decoder_mask = None if mask is None else mx.concatenate(
        [mask, mx.ones((len(prompts), canvas_length), dtype=mx.bool_)], axis=-1)
    masks = model.diffusion_decoder_masks(mx.zeros((len(prompts), canvas_length), dtype=mx.int32), cache,
                                          decoder_mask)
    return ModelDenoiser(model, cache, masks)


def lane_streams(count: int | None) -> list:
    """`count` CPU streams for concurrent queues (default: one per core, at most 4); [None] off the CPU, where one
    queue runs everything anyway."""
    count = max(1, min(os.cpu_count() or 1, 4)) if count is None else count
    if count <= 1 or mx.default_device() != mx.cpu:
        return [None]
    return cpu_streams(count)


def decode(model, prompts: Sequence[Sequence[int]], seeds: Sequence[int], cfg: SamplerConfig, *, pad_id: int,
           batch_size: int = 16, bucket: int = 32, lanes: int | None = None,
           on_batch: Callable[[int], None] | None = None) -> list[Decoded]:
    """Decode every prompt (token ids incl. <bos>) with its own seed; results in input order.

    On a CPU, `lanes` queues (default: one per core, at most 4) are denoised at once on as many streams (threads):
    MLX's CPU kernels are single-threaded, so this is what uses more than one core. A queue computes the same
    whichever lane runs it, so the results do not depend on `lanes` (tested).
    `on_batch(n)` is called whenever n prompts have finished (progress bars).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least its <bos> token")
    canvas_length = int(model.config.canvas_length)
    answer = np.zeros((len(prompts), canvas_length), dtype=np.int64)
    steps = np.zeros(len(prompts), dtype=np.int64)
    queues = plan_queues([len(p) for p in prompts], bucket, batch_size * QUEUE_BATCHES)

    def refill_from(queue: list[int]):
        length = bucket_length(len(prompts[queue[0]]), bucket)

        def refill(free: int):
            taken, queue[:] = queue[:free], queue[free:]
            if not taken:
                return None
            denoiser = prefill(model, [prompts[i] for i in taken], pad_id=pad_id, length=length)
            return denoiser, KeyStreams([seeds[i] for i in taken]), np.array(taken)
        return refill

    def start_next(lane: _Lane) -> None:
        """Give an idle lane the next queue (its first batch_size prompts now, the rest as slots free up)."""
        if lane.refill is not None and on_batch is not None:
            on_batch(lane.queue_size)
        lane.refill = None
        if queues:
            queue = list(queues.pop(0))
            lane.refill, lane.queue_size = refill_from(queue), len(queue)
            lane.join(*lane.refill(batch_size))

    with roomy_buffer_cache():
        lanes_ = [_Lane(cfg, canvas_length, int(model.config.text_config.vocab_size), answer, steps, stream=stream,
                        capacity=batch_size) for stream in lane_streams(lanes)]
        for lane in lanes_:
            with on_stream(lane.stream):
                start_next(lane)
        denoise_lanes(lanes_, on_idle=start_next)
    return [Decoded(tokens=row, steps=int(n)) for row, n in zip(answer.tolist(), steps.tolist())]


def stop_token_ids(model, tokenizer) -> set[int]:
    """Ids that end an answer, as mlx-vlm stops: config and generation-config EOS ids plus the tokenizer's EOS."""
    ids: set[int] = set()
    generation = getattr(model.config, "generation_config", None) or {}
    for source in (getattr(model.config, "eos_token_id", None), generation.get("eos_token_id"),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(t) for t in source)
    return ids


def answer_text(tokenizer, tokens: Sequence[int], stop_ids: set[int]) -> tuple[str, bool]:
    """The text before the first stop id (special tokens kept, as mlx-vlm's generate shows them), and whether one
    was found."""
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    kept = list(tokens if end is None else tokens[:end])
    return tokenizer.decode(kept, skip_special_tokens=False), end is not None
