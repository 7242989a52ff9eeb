"""Batched, bucketed block-diffusion decoding with the reference sampler's semantics.

Many prompts per forward: prompts are grouped into length buckets (multiples of `bucket` tokens), LEFT-padded with a
key mask (RoPE is relative, so left padding is exact up to fp32 rounding, ~1e-5 on the logits), and decoded on one
fixed full canvas; canvases that stop leave the batch. The decoder runs eagerly (on CPU `mx.compile` measured no
faster), so no prompt shape is ever compiled; bucketing keeps the distinct shapes few for a compiled or GPU path.
On a CPU several batches ("lanes") step in lockstep, each on its own MLX stream (thread), with one evaluation per step.

The sampler follows mlx-vlm 0.7.10 `generate/diffusion.py::stream_diffusion_generate` step for step (which follows
transformers' `DiffusionGemmaGenerationMixin.generate`): a random start canvas; at remaining step n of N the logits are
divided by t_min + (t_max - t_min) * n / N; the denoiser canvas is their argmax (temperature 0) or a sample at
`temperature`; `entropy-bound` accepts the lowest-entropy positions while sum(entropy) - max(entropy) <= bound,
`confidence` accepts not-yet-revealed positions whose probability >= threshold (at least one per step) and keeps them;
every other position is renoised uniformly; the next step self-conditions on the temperature-scaled logits; a canvas
stops once its argmax is unchanged for `stability_threshold` steps and its mean entropy < `stop_entropy`. The answer is
the last step's ARGMAX, never the renoised canvas.

Randomness is per example: example i draws from its own key sequence, split exactly as mlx's global generator after
`mx.random.seed(seed_i)`. A batch without padding therefore reproduces mlx-vlm's stock `generate(..., seed=seed_i)`
token for token, and one example's early stop cannot change another example's draws.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import mlx.core as mx
import numpy as np
from mlx_vlm.models.diffusion_gemma.language import _cache_offset, _cache_state
from mlx_vlm.sample_utils import clamp_temperature

from toolsel.allocator import roomy_buffer_cache
from toolsel.eval.kernels import uses_fast_eval_kernels
from toolsel.fastmath import softmax_entropy
from toolsel.streams import cpu_streams, on_stream

SAMPLERS = ("entropy-bound", "confidence")


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings; defaults are the released generation_config.json at temperature 0 (greedy)."""

    sampler: str = "entropy-bound"
    steps: int = 48
    t_min: float = 0.4
    t_max: float = 0.8
    entropy_bound: float = 0.1
    confidence_threshold: float = 0.9  # `confidence` sampler only: mlx-vlm's default acceptance probability
    temperature: float = 0.0  # 0 = greedy denoiser canvas; mlx-vlm semantics (1.0 reproduces transformers)
    stability_threshold: int = 1
    stop_entropy: float = 0.005  # generation_config's `confidence_threshold`: mean entropy below it may stop

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.steps < 1 or self.stability_threshold < 0:
            raise ValueError("steps must be >= 1 and stability_threshold >= 0")
        if not 0 <= self.t_min <= self.t_max or self.t_max <= 0:
            raise ValueError(f"need 0 <= t_min <= t_max and t_max > 0, got {self.t_min}, {self.t_max}")
        if self.temperature < 0 or self.entropy_bound <= 0 or not 0 <= self.confidence_threshold <= 1:
            raise ValueError("temperature must be >= 0, entropy_bound > 0, confidence_threshold in [0, 1]")

    def schedule(self, remaining: int) -> float:
        """Temperature at remaining step `remaining` (N..1), as both references compute it."""
        return self.t_min + (self.t_max - self.t_min) * (remaining / self.steps)


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # the final argmax canvas, full canvas length
    steps: int  # denoiser forward passes this canvas used


def example_seed(seed: int, example_id: str) -> int:
    """A per-example seed that depends on the run seed and the example only (not on batch or order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[:7], "big")


class KeyStreams:
    """One random stream per row, each identical to mlx's global generator after `mx.random.seed(seed)`."""

    _split = staticmethod(mx.vmap(mx.random.split))

    def __init__(self, seeds: Sequence[int]):
        self.state = mx.stack([mx.random.key(int(s)) for s in seeds])

    def next_keys(self) -> mx.array:
        pairs = self._split(self.state)  # [B, 2, 2]: (next state, subkey), like KeySequence::next
        self.state = pairs[:, 0]
        return pairs[:, 1]

    def randint(self, high: int, length: int) -> mx.array:
        draw = mx.vmap(lambda key: mx.random.randint(0, high, (1, length), key=key))
        return draw(self.next_keys()).reshape(-1, length).astype(mx.int32)

    def categorical(self, logits: mx.array) -> mx.array:
        draw = mx.vmap(lambda row, key: mx.random.categorical(row, key=key))
        return draw(logits[:, None], self.next_keys()).reshape(logits.shape[:-1]).astype(mx.int32)


def token_entropy(logits: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    log_probs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -mx.sum(mx.exp(log_probs) * log_probs, axis=-1)


def entropy_bound_mask(entropy: mx.array, bound: float) -> mx.array:
    """Accept the k lowest-entropy positions with sum - max <= bound (an upper bound on their mutual information)."""
    order = mx.argsort(entropy, axis=-1)
    ranked = mx.take_along_axis(entropy, order, axis=-1)
    keep = (mx.cumsum(ranked, axis=-1) - mx.cummax(ranked, axis=-1)) <= bound
    return mx.put_along_axis(mx.zeros_like(keep), order, keep, axis=-1)


def confidence_mask(confidence: mx.array, unrevealed: mx.array, threshold: float) -> mx.array:
    """Unrevealed positions with confidence >= threshold; the single most confident one when none qualifies."""
    accept = unrevealed & (confidence >= threshold)
    force = mx.any(unrevealed, axis=-1) & ~mx.any(accept, axis=-1)
    best = mx.argmax(mx.where(unrevealed, confidence, -mx.inf), axis=-1)
    forced = (mx.arange(confidence.shape[-1])[None, :] == best[:, None]) & force[:, None]
    return accept | forced


def token_probability(logits: mx.array, tokens: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, tokens[..., None], axis=-1).squeeze(-1)
    return mx.exp(picked - mx.logsumexp(logits, axis=-1))


class Denoiser(Protocol):
    def logits(self, canvas: mx.array, self_conditioning: mx.array | None) -> mx.array: ...

    def self_conditioning(self, processed_logits: mx.array) -> mx.array: ...

    def select(self, rows: mx.array) -> "Denoiser": ...


class _Lane:
    """One batch of canvases being denoised: the sampler's state between steps, and the two halves of a step (build
    the step's graph; read its results on the host), so several lanes can share one evaluation per step."""

    def __init__(self, denoiser: Denoiser, streams: KeyStreams, cfg: SamplerConfig, canvas_length: int,
                 vocab_size: int, stream=None):
        self.denoiser, self.streams, self.cfg, self.stream = denoiser, streams, cfg, stream
        self.canvas_length, self.vocab_size = canvas_length, vocab_size
        with on_stream(stream):
            self.canvas = streams.randint(vocab_size, canvas_length)
            batch = self.canvas.shape[0]
            self.revealed, self.draft = mx.zeros(self.canvas.shape, dtype=mx.bool_), self.canvas
        self.rows = np.arange(batch)  # original row of each still-active row
        self.answer = np.zeros((batch, canvas_length), dtype=np.int64)
        self.steps = np.zeros(batch, dtype=np.int64)
        self.self_cond, self.history, self.active, self.remaining = None, [], True, cfg.steps

    def build(self) -> list:
        """The step's graph (nothing evaluated); returns the arrays to evaluate."""
        cfg, streams, remaining = self.cfg, self.streams, self.remaining
        self.steps[self.rows] += 1
        processed = self.denoiser.logits(self.canvas, self.self_cond) / cfg.schedule(remaining)
        self.processed, self.argmax = processed, mx.argmax(processed, axis=-1).astype(mx.int32)
        if remaining == 1:
            return [self.argmax]
        proposal = self.argmax if cfg.temperature <= 0 else _sample(streams, processed, cfg.temperature)
        noise = streams.randint(self.vocab_size, self.canvas_length)
        self.entropy, self.next_self_cond, probs = None, None, None
        if getattr(self.denoiser, "fast", False):  # one exp pass feeds entropy, confidence and self-conditioning
            probs, self.entropy = softmax_entropy(processed)
            self.next_self_cond = self.denoiser.self_conditioning_from_probs(probs)
        if cfg.sampler == "entropy-bound":
            self.entropy = token_entropy(processed) if self.entropy is None else self.entropy
            accept = entropy_bound_mask(self.entropy, cfg.entropy_bound)
            self.canvas = mx.where(accept, proposal, noise)
            self.done = mx.zeros((len(self.rows),), dtype=mx.bool_)
        else:
            confidence = (token_probability(processed, proposal) if probs is None
                          else mx.take_along_axis(probs, proposal[..., None], axis=-1).squeeze(-1))
            accept = confidence_mask(confidence, ~self.revealed, cfg.confidence_threshold)
            accepted = mx.where(accept, proposal, self.draft)
            self.canvas = mx.where(self.revealed | accept, accepted, noise)
            self.revealed, self.draft = self.revealed | accept, mx.where(accept, accepted, self.draft)
            self.done = mx.all(self.revealed, axis=-1)
        self.stable = _stable(self.argmax, self.history, cfg.stability_threshold)
        return [self.argmax, self.canvas, self.done, self.stable, self.revealed, self.draft, streams.state]

    def finish(self) -> None:
        """After the step's evaluation: record the answer, stop and drop finished rows, prepare the next step."""
        self.answer[self.rows] = np.array(self.argmax)  # the answer is the argmax, never the renoised canvas
        self.remaining -= 1
        if self.remaining == 0:
            self.active = False
            return
        stop, stable = np.array(self.done), np.array(self.stable)
        if stable.any():  # like the reference, pay for the entropy test only when some canvas is stable
            entropy = token_entropy(self.processed) if self.entropy is None else self.entropy
            stop |= stable & np.array(mx.mean(entropy, axis=-1) < self.cfg.stop_entropy)
        if stop.all():
            self.active = False
            return
        processed, self_cond = self.processed, self.next_self_cond
        if stop.any():
            keep = mx.array(np.flatnonzero(~stop))
            self.rows = self.rows[~stop]
            self.canvas, processed = self.canvas[keep], processed[keep]
            self_cond = None if self_cond is None else self_cond[keep]
            self.revealed, self.draft = self.revealed[keep], self.draft[keep]
            self.history = [h[keep] for h in self.history]
            self.streams.state = self.streams.state[keep]
            self.denoiser = self.denoiser.select(keep)
        self.self_cond = self.denoiser.self_conditioning(processed) if self_cond is None else self_cond


def denoise_lanes(lanes: Sequence[_Lane]) -> None:
    """Step every lane in lockstep, one evaluation per step for all of them: lanes on different CPU streams run in
    parallel (MLX runs each stream on its own thread), and each lane computes exactly what it would alone."""
    while live := [lane for lane in lanes if lane.active]:
        outputs = []
        for lane in live:
            with on_stream(lane.stream):
                outputs.extend(lane.build())
        mx.eval(outputs)
        for lane in live:
            with on_stream(lane.stream):
                lane.finish()


def denoise(denoiser: Denoiser, streams: KeyStreams, cfg: SamplerConfig, canvas_length: int,
            vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Denoise one canvas per row; returns (final argmax canvas [B, C], forward passes used per row).

    Rows that stop are dropped from the batch (every op is per row, so the others compute exactly the same).
    """
    lane = _Lane(denoiser, streams, cfg, canvas_length, vocab_size)
    denoise_lanes([lane])
    return lane.answer, lane.steps


def _sample(streams: KeyStreams, processed: mx.array, temperature: float) -> mx.array:
    temperature = clamp_temperature(temperature)
    logits = processed.astype(mx.float32)
    if temperature != 1.0:
        logits = logits / temperature
    return streams.categorical(logits)


def _stable(argmax: mx.array, history: list, threshold: int) -> mx.array:
    """Per row: argmax equal to each of the last `threshold` argmaxes (never before `threshold` steps)."""
    if len(history) == threshold:
        stable = mx.ones((argmax.shape[0],), dtype=mx.bool_)
        for previous in history:
            stable = stable & mx.all(argmax == previous, axis=-1)
    else:
        stable = mx.zeros((argmax.shape[0],), dtype=mx.bool_)
    history.append(argmax)
    if len(history) > threshold:
        history.pop(0)
    return stable


class _EncoderView:
    """What the decoder reads from one layer's encoder cache (keys/values in time order, offset), row-selectable."""

    def __init__(self, keys: mx.array, values: mx.array, offset: int):
        self.keys, self.values, self.offset = keys, values, offset

    @property
    def decoder_state(self):
        return self.keys, self.values


class ModelDenoiser:
    """The mlx-vlm DiffusionGemma decoder over a filled encoder cache (the calls the stock sampler makes)."""

    def __init__(self, model, cache, masks):
        self.model, self.masks = model, masks
        self.cache = [c if isinstance(c, _EncoderView) else _EncoderView(*_cache_state(c), _cache_offset(c))
                      for c in cache]
        self.context = model.diffusion_prepare_self_conditioning()
        self.fast = uses_fast_eval_kernels(model)  # toolsel.eval.kernels: sampler softmax from one fast exp pass

    def logits(self, canvas, self_conditioning):
        return self.model.diffusion_decoder_logits(canvas, cache=self.cache, self_conditioning=self_conditioning,
                                                   decoder_attention_mask=self.masks)

    def self_conditioning(self, processed_logits):
        return self.model.diffusion_self_conditioning(processed_logits, self.context)

    def self_conditioning_from_probs(self, probs):
        """mlx-vlm's `diffusion_self_conditioning` given softmax(processed) already (None: a quantized embedding,
        whose decoder takes the logits themselves)."""
        if self.context is None:
            return None
        weight = self.context
        return (probs.astype(weight.dtype) @ weight).astype(weight.dtype) * self.model.model.decoder.embed_scale

    def select(self, rows):
        cache = [_EncoderView(c.keys[rows], c.values[rows], c.offset) for c in self.cache]
        masks = {k: (None if m is None else m[rows]) for k, m in self.masks.items()}
        return ModelDenoiser(self.model, cache, masks)


def bucket_length(length: int, bucket: int) -> int:
    return -(-length // bucket) * bucket


def plan_batches(lengths: Sequence[int], batch_size: int, bucket: int) -> list[list[int]]:
    """Indices grouped by padded length, at most `batch_size` each; deterministic, shortest buckets first."""
    order = sorted(range(len(lengths)), key=lambda i: (bucket_length(lengths[i], bucket), i))
    batches, current, current_len = [], [], None
    for i in order:
        padded = bucket_length(lengths[i], bucket)
        if current and (padded != current_len or len(current) == batch_size):
            batches.append(current)
            current = []
        current.append(i)
        current_len = padded
    if current:
        batches.append(current)
    return batches


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[mx.array, mx.array | None]:
    """[B, length] int32 ids left-padded with pad_id, and the key mask (None when nothing is padded)."""
    ids = np.full((len(prompts), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), length), dtype=bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = True
    return mx.array(ids), (None if mask.all() else mx.array(mask))


def start_batch(model, prompts: Sequence[Sequence[int]], seeds: Sequence[int], cfg: SamplerConfig, *, pad_id: int,
                length: int | None = None, stream=None) -> _Lane:
    """Left-pad to `length` (default: the longest prompt), prefill the encoder, and set up the batch's canvases."""
    length = length or max(len(p) for p in prompts)
    ids, mask = left_pad(prompts, length, pad_id)
    with on_stream(stream):
        cache = model.diffusion_prefill_cache(ids, attention_mask=mask, cache=model.make_cache(), pixel_values=None,
                                              mm_token_type_ids=None, prefill_step_size=None, chunk_prefill=False)
        canvas_length = int(model.config.canvas_length)
        decoder_mask = None if mask is None else mx.concatenate(
            [mask, mx.ones((len(prompts), canvas_length), dtype=mx.bool_)], axis=-1)
        masks = model.diffusion_decoder_masks(mx.zeros((len(prompts), canvas_length), dtype=mx.int32), cache,
                                              decoder_mask)
        return _Lane(ModelDenoiser(model, cache, masks), KeyStreams(seeds), cfg, canvas_length,
                     int(model.config.text_config.vocab_size), stream)


def lane_streams(count: int | None) -> list:
    """`count` CPU streams for concurrent batches (default: one per core, at most 4); [None] off the CPU, where one
    queue runs everything anyway."""
    count = max(1, min(os.cpu_count() or 1, 4)) if count is None else count
    if count <= 1 or mx.default_device() != mx.cpu:
        return [None]
    return cpu_streams(count)


def decode(model, prompts: Sequence[Sequence[int]], seeds: Sequence[int], cfg: SamplerConfig, *, pad_id: int,
           batch_size: int = 16, bucket: int = 32, lanes: int | None = None,
           on_batch: Callable[[int], None] | None = None) -> list[Decoded]:
    """Decode every prompt (token ids incl. <bos>) with its own seed; results in input order.

    On a CPU, `lanes` batches (default: one per core, at most 4) are denoised at once on as many streams (threads):
    MLX's CPU kernels are single-threaded, so this is what uses more than one core. Each batch computes exactly what
    it computes alone, so the results do not depend on `lanes` (tested).
    `on_batch(n)` is called after each batch with the number of prompts it decoded (progress bars).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least its <bos> token")
    results: list[Decoded | None] = [None] * len(prompts)
    streams = lane_streams(lanes)
    plan = plan_batches([len(p) for p in prompts], batch_size, bucket)
    with roomy_buffer_cache():
        _decode_groups(model, prompts, seeds, cfg, pad_id, plan, bucket, streams, results, on_batch)
    return results  # type: ignore[return-value]


def _decode_groups(model, prompts, seeds, cfg, pad_id, plan, bucket, streams, results, on_batch) -> None:
    for first in range(0, len(plan), len(streams)):
        group = plan[first:first + len(streams)]
        started = [start_batch(model, [prompts[i] for i in batch], [seeds[i] for i in batch], cfg, pad_id=pad_id,
                               length=bucket_length(len(prompts[batch[0]]), bucket), stream=stream)
                   for batch, stream in zip(group, streams)]
        denoise_lanes(started)
        for batch, lane in zip(group, started):
            for i, row, n in zip(batch, lane.answer.tolist(), lane.steps.tolist()):
                results[i] = Decoded(tokens=row, steps=int(n))
            if on_batch is not None:
                on_batch(len(batch))


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
