"""The block-diffusion sampler with the reference semantics, over any `Denoiser`, for a batch whose rows come and go.

The sampler follows mlx-vlm 0.7.10 `generate/diffusion.py::stream_diffusion_generate` step for step (which follows
transformers' `DiffusionGemmaGenerationMixin.generate`): a random start canvas; at remaining step n of N the logits are
divided by t_min + (t_max - t_min) * n / N; the denoiser canvas is their argmax (temperature 0) or a sample at
`temperature`; `entropy-bound` accepts the lowest-entropy positions while sum(entropy) - max(entropy) <= bound,
`confidence` accepts not-yet-revealed positions whose probability >= threshold (at least one per step) and keeps them;
every other position is renoised uniformly; the next step self-conditions on the temperature-scaled logits; a canvas
stops once its argmax is unchanged for `stability_threshold` steps and its mean entropy < `stop_entropy`. The answer is
the last step's ARGMAX, never the renoised canvas.

Every op is per row, and each row carries its own step count, so a batch is a set of slots: a row that stops leaves,
and a new row can join at its own first step (`_Lane.refill`), with no self-conditioning and no argmax history yet,
exactly as if it had started alone. Randomness is per example: row i draws from its own key sequence, split exactly as
mlx's global generator after `mx.random.seed(seed_i)`, so a row's draws never depend on its neighbours.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import mlx.core as mx
import numpy as np
from mlx_vlm.sample_utils import clamp_temperature

from toolsel.fastmath import softmax_entropy
from toolsel.streams import on_stream

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

    # only for lanes that refill: these rows' encoder state appended, and the self-conditioning of a first step
    def extend(self, other: "Denoiser") -> "Denoiser": ...

    def blank_self_conditioning(self, rows: int) -> mx.array: ...


# A lane's source of new rows: given the free slots, (denoiser, key streams, result indices) of at most that many
# rows, prefilled on the current stream, or None.
Refill = Callable[[int], "tuple[Denoiser, KeyStreams, np.ndarray] | None"]


class _Lane:
    """A batch of canvas slots being denoised: the sampler's state between steps, and the two halves of a step (build
    the step's graph; read its results on the host), so several lanes can share one evaluation per step.

    `answer[i]` and `steps[i]` receive result row i's final argmax and forward passes. With `refill`, slots freed by
    rows that stop are filled with new rows between steps (at most `capacity` rows at once)."""

    def __init__(self, cfg: SamplerConfig, canvas_length: int, vocab_size: int, answer: np.ndarray,
                 steps: np.ndarray, *, stream=None, refill: Refill | None = None, capacity: int = 0):
        self.cfg, self.stream, self.refill, self.capacity = cfg, stream, refill, capacity
        self.canvas_length, self.vocab_size, self.answer, self.steps = canvas_length, vocab_size, answer, steps
        self.rows = np.zeros(0, dtype=np.int64)  # result index of each active row
        self.remaining = np.zeros(0, dtype=np.int64)  # each row's remaining steps (N..1)
        self.denoiser = self.streams = self.self_cond = None
        self.history: list = []
        self.active = False

    def join(self, denoiser: Denoiser, streams: KeyStreams, rows: np.ndarray) -> None:
        """New rows at their first step: a fresh start canvas from each row's own stream, no history, no
        self-conditioning (a blank one beside rows that have it, which is what the decoder uses for None)."""
        canvas = streams.randint(self.vocab_size, self.canvas_length)
        count = len(rows)
        if not len(self.rows):
            self.denoiser, self.streams, self.canvas, self.self_cond, self.history = denoiser, streams, canvas, None, []
            self.revealed, self.draft = mx.zeros(canvas.shape, dtype=mx.bool_), canvas
        else:
            self.denoiser = self.denoiser.extend(denoiser)
            self.streams.state = mx.concatenate([self.streams.state, streams.state])
            self.canvas = mx.concatenate([self.canvas, canvas])
            self.revealed = mx.concatenate([self.revealed, mx.zeros(canvas.shape, dtype=mx.bool_)])
            self.draft = mx.concatenate([self.draft, canvas])
            unseen = mx.full(canvas.shape, -1, dtype=mx.int32)  # never equals an argmax: not stable before its time
            self.history = [mx.concatenate([h, unseen]) for h in self.history]
            if self.self_cond is not None:
                self.self_cond = mx.concatenate([self.self_cond, denoiser.blank_self_conditioning(count)])
        self.rows = np.concatenate([self.rows, np.asarray(rows, dtype=np.int64)])
        self.remaining = np.concatenate([self.remaining, np.full(count, self.cfg.steps, dtype=np.int64)])
        self.active = True

    def _temperature(self, logits: mx.array):
        """The schedule temperature of each row (a scalar while every row is at the same step, as in stock)."""
        if (self.remaining == self.remaining[0]).all():
            return self.cfg.schedule(int(self.remaining[0]))
        per_row = np.array([self.cfg.schedule(int(r)) for r in self.remaining], dtype=np.float32)
        return mx.array(per_row).astype(logits.dtype)[:, None, None]

    def build(self) -> list:
        """The step's graph (nothing evaluated); returns the arrays to evaluate."""
        cfg, streams = self.cfg, self.streams
        self.steps[self.rows] += 1
        logits = self.denoiser.logits(self.canvas, self.self_cond)
        processed = logits / self._temperature(logits)
        self.processed, self.argmax = processed, mx.argmax(processed, axis=-1).astype(mx.int32)
        self.last_only = bool((self.remaining == 1).all())
        if self.last_only:
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
        """After the step's evaluation: record the answers, drop rows that stop, refill, prepare the next step."""
        self.answer[self.rows] = np.array(self.argmax)  # the answer is the argmax, never the renoised canvas
        self.remaining -= 1
        stop = self.remaining == 0
        if not self.last_only:
            stop |= np.array(self.done)
            stable = np.array(self.stable) & ~stop
            if stable.any():  # like the reference, pay for the entropy test only when some canvas is stable
                entropy = token_entropy(self.processed) if self.entropy is None else self.entropy
                stop |= stable & np.array(mx.mean(entropy, axis=-1) < self.cfg.stop_entropy)
        if stop.all():
            self.rows, self.remaining = self.rows[:0], self.remaining[:0]
        else:
            processed, self_cond = self.processed, self.next_self_cond
            if stop.any():
                keep = mx.array(np.flatnonzero(~stop))
                self.rows, self.remaining = self.rows[~stop], self.remaining[~stop]
                self.canvas, processed = self.canvas[keep], processed[keep]
                self_cond = None if self_cond is None else self_cond[keep]
                self.revealed, self.draft = self.revealed[keep], self.draft[keep]
                self.history = [h[keep] for h in self.history]
                self.streams.state = self.streams.state[keep]
                self.denoiser = self.denoiser.select(keep)
            self.self_cond = self.denoiser.self_conditioning(processed) if self_cond is None else self_cond
        free = self.capacity - len(self.rows)
        if self.refill is not None and free > 0 and (new := self.refill(free)) is not None:
            self.join(*new)
        self.active = bool(len(self.rows))


def denoise_lanes(lanes: Sequence[_Lane], on_idle: Callable[[_Lane], None] | None = None) -> None:
    """Step every lane in lockstep, one evaluation per step for all of them: lanes on different CPU streams run in
    parallel (MLX runs each stream on its own thread), and each lane computes exactly what it would alone.
    `on_idle(lane)` may give a lane that ran out of rows new ones (`lane.join`) before the next step."""
    while live := [lane for lane in lanes if lane.active]:
        outputs = []
        for lane in live:
            with on_stream(lane.stream):
                outputs.extend(lane.build())
        mx.eval(outputs)
        for lane in live:
            with on_stream(lane.stream):
                lane.finish()
                if not lane.active and on_idle is not None:
                    on_idle(lane)


def denoise(denoiser: Denoiser, streams: KeyStreams, cfg: SamplerConfig, canvas_length: int,
            vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Denoise one canvas per row; returns (final argmax canvas [B, C], forward passes used per row).

    Rows that stop are dropped from the batch (every op is per row, so the others compute exactly the same).
    """
    batch = int(streams.state.shape[0])
    answer, steps = np.zeros((batch, canvas_length), dtype=np.int64), np.zeros(batch, dtype=np.int64)
    lane = _Lane(cfg, canvas_length, vocab_size, answer, steps)
    lane.join(denoiser, streams, np.arange(batch))
    denoise_lanes([lane])
    return answer, steps


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
