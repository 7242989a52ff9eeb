"""CPU streams: how toolsel uses more than one core with MLX.

MLX runs each stream on its own thread, and its CPU kernels (and our MKL, toolsel.blas) are single-threaded, so work
spread over several CPU streams is what runs in parallel: training shards (toolsel.train.parallel) and concurrent
eval batches (toolsel.eval.decode).

MLX's scheduler walks the graph breadth-first only up to `MLX_BFS_MAX_WIDTH` nodes wide (default 20) and otherwise
depth-first, which queues one stream's ops long before another's (measured: no speed-up at all). MLX reads it once,
at its first evaluation, so importing this module widens it when computing on the CPU (on a GPU the wider order
would only keep more arrays alive).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import mlx.core as mx

if mx.default_device() == mx.cpu:
    os.environ.setdefault("MLX_BFS_MAX_WIDTH", "4096")

_STREAMS: list = []


def cpu_streams(count: int) -> list:
    """`count` CPU streams, made once per process and shared (a stream is a thread; new ones per call would pile
    up)."""
    while len(_STREAMS) < count:
        _STREAMS.append(mx.new_stream(mx.cpu))
    return _STREAMS[:count]


def on_stream(stream):
    """A context that makes `stream` the default (None: leave the default stream as it is)."""
    return mx.stream(stream) if stream is not None else nullcontext()
