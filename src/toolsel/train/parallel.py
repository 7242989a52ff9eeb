"""Data parallelism inside one process: a micro-batch's row shards run on separate CPU streams, one thread each.

MLX runs each stream on its own thread, and an op's gradient runs on the stream of the op, so a loss computed
shard by shard under `mx.stream(...)` is differentiated shard by shard in parallel too. On a CPU this is what uses
more than one core: MLX's CPU kernels are single-threaded, and MKL runs with one thread (toolsel.blas). The loss
is the token-weighted mean over the shards, each with its own key: exactly gradient accumulation over the shards.
The shard count is a training param, not a machine property, so results do not depend on the machine's core count;
on a GPU the shards run one after another on its stream (same arithmetic, no parallelism needed).
(toolsel.streams explains the threads and the scheduler setting this needs.)
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from toolsel.streams import cpu_streams, on_stream


def shard_over_streams(loss_fn: Callable, count: int) -> Callable:
    """loss_fn(model, batch, key) -> (mean loss, ntokens), computed on up to `count` row shards of the batch
    (fewer when the batch has fewer rows), in parallel on a CPU."""
    if count <= 1:
        return loss_fn

    def sharded(model, batch, key):
        rows = next(iter(batch.values())).shape[0]
        shards = min(count, rows)
        if shards == 1:
            return loss_fn(model, batch, key)
        bounds = [rows * i // shards for i in range(shards + 1)]
        keys = mx.random.split(key, shards)
        total, ntokens = mx.array(0.0), mx.array(0, dtype=mx.int32)
        on_cpu = mx.default_device() == mx.cpu
        streams = cpu_streams(shards) if on_cpu else [None] * shards
        for i, stream in enumerate(streams):
            with on_stream(stream):
                shard = {name: value[bounds[i]:bounds[i + 1]] for name, value in batch.items()}
                loss, count_i = loss_fn(model, shard, keys[i])
                total = total + loss.astype(mx.float32) * count_i
                ntokens = ntokens + count_i
        return total / ntokens, ntokens

    return sharded
