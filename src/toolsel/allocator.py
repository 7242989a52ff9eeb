"""Freed CPU memory reused instead of returned to the OS, whose fresh pages the kernel must fault in and zero.

By default mlx keeps only 32 MB of freed buffers on the CPU, and glibc hands every block over its (adaptive, at most
32 MB) mmap threshold back to the OS when it is freed (perf: ~6% of a training step, ~15% of an eval decode step on
2 CPU cores). Two remedies:

- glibc's heap keeps freed memory (`toolsel.blas.HEAP_TUNABLES`, set for every process `toolsel` or
  `python -m toolsel.blas` starts): any later block of any size reuses it. This is what eval wants: its batches change
  shape every step, and 84 test prompts faulted in 760 MB of fresh pages (193k faults, ~1 s) under mlx's own cache
  but 250 MB with the heap (first decode 4.5 -> 3.6 s, bench/eval_throughput.py).
- a roomy mlx cache (`roomy_cache_limit`): reuses a freed buffer for a request of about its size. Right for
  training, whose compiled step asks for the same sizes every step; and the fallback where the heap setting is off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import mlx.core as mx

from toolsel.blas import HEAP_TUNABLES

MIN_CACHE_BYTES = 2 << 30


def roomy_cache_limit() -> int:
    """The cache limit toolsel uses on the CPU: twice the memory in use, at least 2 GiB."""
    return max(mx.get_active_memory() * 2, MIN_CACHE_BYTES)


def heap_keeps_memory() -> bool:
    """Whether this process started with `toolsel.blas.HEAP_TUNABLES` (glibc reads them at start only)."""
    return HEAP_TUNABLES in os.environ.get("GLIBC_TUNABLES", "")


@contextmanager
def roomy_buffer_cache():
    """Inside it, mlx caches up to `roomy_cache_limit()` of freed CPU buffers; the previous limit comes back after
    (a library call should not change how the rest of the process allocates). No-op off the CPU, and where glibc's
    heap keeps freed memory already (a roomy cache of many sizes beside it only pins memory the heap would reuse)."""
    if mx.default_device() != mx.cpu or heap_keeps_memory():
        yield
        return
    previous = mx.set_cache_limit(roomy_cache_limit())
    try:
        yield
    finally:
        mx.set_cache_limit(previous)
