"""The training loop: gradient accumulation, clipping, validation at a fixed seed, progress, resumable state.

`train(model, optimizer, loss_fn, train_batches, val_batches, args)` works with any objective
`loss_fn(model, batch, key) -> (mean loss, ntokens)` (ours: `toolsel.train.objective.diffusion_loss`).
Every micro-step's gradients are evaluated at once (no stacked lazy graphs), so memory stays at one
micro-batch's peak. All randomness comes from `args.seed` through an explicit key chain stored in the state,
so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from toolsel.allocator import roomy_cache_limit
from toolsel.progress import bar
from toolsel.streams import on_stream
from toolsel.train.batches import batch_tokens
from toolsel.train.fast import use_fast_kernels
from toolsel.train.optim import clip_scale, global_norm
from toolsel.train.parallel import leaf_streams, row_shards, updates_over_streams


@dataclass
class TrainArgs:
    steps: int  # optimizer updates
    grad_accum: int = 1  # micro-batches per update
    grad_clip: float | None = 1.0  # max global grad norm (None/0: off)
    val_every: int = 0  # validate every N updates (0: only at the end)
    save_every: int = 0  # checkpoint every N updates (0: never)
    seed: int = 0  # corruption keys and dropout
    val_seed: int = 0  # fixed corruption for validation, so curves compare across runs
    grad_checkpoint: bool = False  # recompute each layer in the backward pass
    fast_kernels: bool = True  # vectorisable GeGLU, soft-cap and experts (toolsel.train.fast)
    compile: bool = True  # one compiled graph per batch shape for the gradient step and the update
    shards: int = 1  # row shards per micro-batch, run in parallel on CPU streams (toolsel.train.parallel)


@dataclass
class TrainState:
    step: int = 0
    rng: list[int] = field(default_factory=list)
    position: dict | None = None
    history: list[dict] = field(default_factory=list)  # {step, train_loss, lr[, val_loss]} per update
    best_val_loss: float | None = None
    best_step: int | None = None
    tokens: int = 0
    train_seconds: float = 0.0
    peak_memory_gb: float = 0.0  # the largest peak of every run that contributed (resumes included)

    @classmethod
    def fresh(cls, seed: int) -> "TrainState":
        return cls(rng=[int(x) for x in mx.random.key(seed).tolist()])

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def evaluate(model, loss_fn, batches, seed: int) -> float:
    """Token-weighted mean loss over `batches`, batch i corrupted with the key derived from (seed, i)."""
    training = model.training
    model.eval()
    keys = mx.random.split(mx.random.key(seed), max(len(batches), 2))
    total, count = mx.array(0.0), 0
    for key, batch in zip(keys, batches):
        loss, ntokens = loss_fn(model, batch, key)
        total = total + loss.astype(mx.float32) * ntokens
        count += int(ntokens)
        mx.eval(total)
    model.train(training)
    return total.item() / max(count, 1)


def accumulate_gradients(value_and_grad, batches, keys, count: int, shards: int = 1):
    """Token-weighted mean gradient over `count` micro-batches, evaluating each at once (one micro-batch's peak;
    the last one is returned lazy, to be evaluated with the update); each micro-batch's row shards run concurrently
    on CPU streams (toolsel.train.parallel).

    Returns (gradient, loss sum, tokens supervised, tokens processed): the gradient and loss sum / tokens supervised
    are exactly those of one big batch made of all the micro-batches.
    """
    parts, tokens = [], 0  # (grads, mean loss, supervised tokens) of every shard of every micro-batch
    for micro in range(count):
        batch = next(batches)
        tokens += batch_tokens(batch)
        evaluated = []
        for rows, key, stream in row_shards(batch, keys[micro], shards):
            with on_stream(stream):
                evaluated.append(value_and_grad(rows, key))
        parts += [(grads, loss, int(ntokens)) for (loss, ntokens), grads in evaluated]
        if len(parts) > 1:  # one running sum
            parts = [_merge(parts, shards)]
        if micro + 1 < count:  # memory stays at one micro-batch's gradients; the last is left to the update's eval
            mx.eval(parts[0][:2])
    grads, loss, ntok = parts[0]
    return grads, loss.astype(mx.float32) * ntok, ntok, tokens


def _merge(parts, streams: int):
    """One (grads, mean loss, tokens) from several, token-weighted; each parameter on its `leaf_streams` stream."""
    total = sum(n for _, _, n in parts)
    weights = [mx.array(n / total, dtype=mx.float32) for _, _, n in parts]
    flat = [tree_flatten(grads) for grads, _, _ in parts]
    names = [name for name, _ in flat[0]]
    leaves = list(zip(*[[g for _, g in part] for part in flat]))  # per parameter, its gradient in every part
    merged = []
    for same_param, stream in zip(leaves, leaf_streams([g[0] for g in leaves], streams)):
        with on_stream(stream):
            merged.append(_weighted_sum(list(same_param), weights))
    loss = sum(w * loss.astype(mx.float32) for w, (_, loss, _) in zip(weights, parts))
    return tree_unflatten(list(zip(names, merged))), loss, total


@mx.compile
def _weighted_sum(arrays, weights):
    # compiled: one fused pass instead of a multiply and an add per part
    return sum(w.astype(a.dtype) * a for w, a in zip(weights, arrays))


def make_value_and_grad(model, loss_fn: Callable, compiled: bool):
    """(batch, key) -> ((loss, ntokens), gradients of the trainable parameters), optionally one compiled graph.

    The compiled form takes the trainable parameters as an explicit input (compile needs a pure function) and the
    global RNG state as implicit input and output (LoRA dropout draws from it), then gives the model its real
    parameters back: tracing leaves placeholders in the module tree.
    """
    if not compiled:
        return nn.value_and_grad(model, lambda batch, key: loss_fn(model, batch, key))

    def loss_of(params, batch, key):
        model.update(params)
        return loss_fn(model, batch, key)

    step = mx.compile(mx.value_and_grad(loss_of), inputs=[mx.random.state], outputs=[mx.random.state])

    def value_and_grad(batch, key):
        params = model.trainable_parameters()
        try:
            return step(params, batch, key)
        finally:
            model.update(params)

    return value_and_grad


def make_update(model, optimizer, grad_clip: float | None, compiled: bool, streams: int = 1):
    """grads -> grad norm: clip, then one AdamW update in place (compiled: one fused pass per weight,
    `optim.fused_adamw_single`), the parameters spread over `streams` CPU streams.

    Not one compiled graph around the whole update: compiling mlx's AdamW makes a strided, scalar CPU loop of it
    (toolsel.train.optim explains), 3-7x slower than the per-weight kernels."""

    def update(grads):
        leaves = [g for _, g in tree_flatten(grads)]
        placement = leaf_streams(leaves, streams)
        grad_norm = global_norm(grads, placement)
        with updates_over_streams(optimizer, leaves, placement, clip_scale(grad_norm, grad_clip), fused=compiled):
            optimizer.update(model, grads)
        return grad_norm

    return update


@contextmanager
def frozen_heap():
    """Leave every Python object that exists now out of the garbage collector's walks while inside.

    Each update makes thousands of short-lived Python objects (parameter trees, optimizer state, array handles), and
    the collections they trigger walked the whole heap (mlx-vlm, transformers, the model): 17% of a training step's
    CPU time on the bench (perf), all of it on the thread that feeds MLX's streams."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def train(model, optimizer, loss_fn: Callable, train_batches, val_batches, args: TrainArgs, *,
          state: TrainState | None = None, on_report: Callable[[dict], None] | None = None,
          on_checkpoint: Callable[[TrainState], None] | None = None) -> TrainState:
    """Run updates `state.step + 1 .. args.steps`; report every update, validate and checkpoint on schedule."""
    state = state or TrainState.fresh(args.seed)
    if args.grad_checkpoint:
        enable_grad_checkpoint(model)
    if args.fast_kernels:
        use_fast_kernels(model)
    model.train()
    if mx.default_device() == mx.cpu:
        mx.set_cache_limit(roomy_cache_limit())  # toolsel.allocator; a training process keeps it
    optimizer.init(model.trainable_parameters())  # fills in missing moments only; compile must see the whole state
    value_and_grad = make_value_and_grad(model, loss_fn, args.compile)
    update = make_update(model, optimizer, args.grad_clip, args.compile, args.shards)
    rng = mx.array(state.rng, dtype=mx.uint32)
    with frozen_heap():
        progress = bar(total=args.steps, desc="train", unit="step")
        progress.update(state.step)
        while state.step < args.steps:
            # One key per update from the chain; the update's micro-batches and LoRA dropout derive from it.
            rng, step_key = mx.random.split(rng)
            micro_keys = mx.random.split(step_key, max(args.grad_accum, 2))
            mx.random.seed(int(step_key[0].item()))
            tic = time.perf_counter()
            grads, loss_sum, ntok, tokens = accumulate_gradients(value_and_grad, train_batches, micro_keys,
                                                                 args.grad_accum, args.shards)
            grad_norm = update(grads)
            mx.eval(model.trainable_parameters(), optimizer.state, grad_norm, loss_sum)
            seconds = time.perf_counter() - tic
            state.step, state.tokens = state.step + 1, state.tokens + tokens
            state.train_seconds += seconds
            state.rng = [int(x) for x in rng.tolist()]
            state.position = getattr(train_batches, "position", None)
            row = {"step": state.step, "train_loss": loss_sum.item() / ntok, "lr": optimizer.learning_rate.item()}
            last = state.step == args.steps
            if val_batches and ((args.val_every and state.step % args.val_every == 0) or last):
                row["val_loss"] = evaluate(model, loss_fn, val_batches, args.val_seed)
                if state.best_val_loss is None or row["val_loss"] < state.best_val_loss:
                    state.best_val_loss, state.best_step = row["val_loss"], state.step
            state.history.append(row)
            state.peak_memory_gb = max(state.peak_memory_gb, mx.get_peak_memory() / 1e9)
            report = {**row, "grad_norm": grad_norm.item(), "tokens_per_sec": tokens / seconds,
                      "peak_memory_gb": state.peak_memory_gb}
            progress.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{report['tokens_per_sec']:.0f}")
            progress.update(1)
            if "val_loss" in row:
                tqdm.write(f"step {state.step}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f}")
            if on_report is not None:
                on_report(report)
            if on_checkpoint is not None and args.save_every and (state.step % args.save_every == 0 or last):
                on_checkpoint(state)
        progress.close()
    return state


# ---- gradient checkpointing ---------------------------------------------------------------------------------
# Encoder and decoder run the SAME layer objects. A naive `mx.checkpoint` around a decoder layer captures the
# encoder's KV through the cache object as a constant and silently drops the gradient flowing from the decoder
# into the encoder (reference.md); wrapping encoder layers fails because the cache update escapes the checkpoint.
# Here the encoder KV enters the checkpointed function as an explicit input, and the encoder's new KV leaves it as
# an explicit output that is stored in the real cache afterwards.


class _KVView:
    """Cache stand-in inside a checkpointed layer: serves fixed encoder KV (decoder) or records new KV (encoder)."""

    def __init__(self, keys=None, values=None, offset=0):
        self.keys, self.values, self.offset = keys, values, offset

    @property
    def decoder_state(self):
        return self.keys, self.values

    def update_and_fetch(self, keys, values):
        self.keys, self.values = keys, values
        self.offset += keys.shape[2]
        return keys, values


def _checkpointed_call(self, x, mask=None, cache=None, *, decoder=False, offset=None, layer_scalar=None):
    from mlx_vlm.models.diffusion_gemma.language import _cache_offset, _cache_state

    layer_call = type(self).__mro__[1].__call__
    params = self.trainable_parameters()
    if decoder:
        kv = _cache_state(cache)
        offset = _cache_offset(cache) if offset is None else offset

        def run_decoder(params, x, scalar, kv):
            self.update(params)
            view = _KVView(*kv, offset) if kv is not None else None
            return layer_call(self, x, mask, view, decoder=True, offset=offset, layer_scalar=scalar)

        return mx.checkpoint(run_decoder)(params, x, layer_scalar, kv)
    if cache is not None and getattr(cache, "keys", None) is not None:
        # A continuation pass over a filled cache (not used in training): no checkpoint.
        return layer_call(self, x, mask, cache, decoder=False, offset=offset, layer_scalar=layer_scalar)

    def run_encoder(params, x, scalar):
        self.update(params)
        view = _KVView() if cache is not None else None
        h = layer_call(self, x, mask, view, decoder=False, offset=offset, layer_scalar=scalar)
        return (h, view.keys, view.values) if view is not None else (h,)

    out = mx.checkpoint(run_encoder)(params, x, layer_scalar)
    if cache is not None:
        cache.update_and_fetch(out[1], out[2])
    return out[0]


_CHECKPOINTED: dict[type, type] = {}


def enable_grad_checkpoint(model) -> None:
    """Recompute every decoder/encoder layer in the backward pass (per instance; numerics unchanged)."""
    for layer in model.model.decoder.layers:
        cls = type(layer)
        if getattr(cls, "_toolsel_checkpointed", False):
            continue
        if cls not in _CHECKPOINTED:
            _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (cls,),
                                      {"__call__": _checkpointed_call, "_toolsel_checkpointed": True})
        layer.__class__ = _CHECKPOINTED[cls]


def disable_grad_checkpoint(model) -> None:
    for layer in model.model.decoder.layers:
        if getattr(type(layer), "_toolsel_checkpointed", False):
            layer.__class__ = type(layer).__mro__[1]
