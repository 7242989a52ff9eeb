"""`eval.kernels: fast`: decode with vectorisable float32 transcendentals on the CPU (`toolsel.fastmath`).

perf on bench/eval_throughput.py (the pipeline's fused model, 84 test prompts) put ~55% of decoding in mlx's scalar
CPU exp/tanh/pow: the attention softmaxes, the vocabulary soft-cap, the sampler's entropy and the self-conditioning
softmax, every GeGLU. `use_fast_eval_kernels` swaps, on this one model instance:

- GeGLU (dense MLP, experts, self-conditioning) and the soft-cap: `toolsel.train.fast` (rational tanh);
- attention: `toolsel.fastmath.attention` (its softmax from a vectorised exp) for every attention layer, encoder
  prefill and decoder;

and `toolsel.eval.decode` then takes the sampler's entropy, confidence and self-conditioning probabilities from one
fast softmax instead of three mlx exp passes. Each function is within ~4e-7 of mlx's (tests/test_fastmath.py), so
the logits move by rounding only: decisions agree with stock generate except at exact near-ties (84/84 test prompts
decoded identically, bench/eval_throughput.py). `exact` keeps mlx-vlm's kernels, bit-identical to stock `generate`.

On a GPU mlx's kernels are vectorised already: `fast` changes nothing there.
Mechanics: mlx-vlm's Attention calls the module-level `scaled_dot_product_attention`; we replace that name once with a
pass-through that takes the fast path only inside a patched instance's call (a context variable), so every other
model in the process, stock generate included, runs mlx-vlm's code unchanged.
"""

from __future__ import annotations

import contextvars

import mlx.core as mx
from mlx_vlm.models.diffusion_gemma import language

from toolsel.fastmath import attention
from toolsel.train.fast import _swap, use_fast_kernels

KERNELS = ("fast", "exact")

_FAST_ATTENTION = contextvars.ContextVar("toolsel_fast_attention", default=False)
_STOCK_SDPA = language.scaled_dot_product_attention


def _dispatch_sdpa(queries, keys, values, cache, scale, mask, sinks=None):
    plain_cache = cache is None or not hasattr(cache, "dequantize")  # quantized KV caches keep their own kernels
    if _FAST_ATTENTION.get() and sinks is None and plain_cache:
        return attention(queries, keys, values, scale, mask)
    return _STOCK_SDPA(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)


def _fast_attention_call(self, *args, **kwargs):
    token = _FAST_ATTENTION.set(True)
    try:
        return type(self).__mro__[1].__call__(self, *args, **kwargs)
    finally:
        _FAST_ATTENTION.reset(token)


def use_fast_eval_kernels(model) -> bool:
    """Install the fast kernels on this model when computing on the CPU (idempotent); returns whether it did."""
    if mx.default_device() != mx.cpu:
        return False
    use_fast_kernels(model, tiled_experts=False)
    language.scaled_dot_product_attention = _dispatch_sdpa
    for module in model.modules():
        if isinstance(module, language.Attention):
            _swap(module, _fast_attention_call)
    model._toolsel_fast_eval = True
    return True


def uses_fast_eval_kernels(model) -> bool:
    return bool(getattr(model, "_toolsel_fast_eval", False))


def apply_kernels(model, kernels: str):
    """Install `kernels` ("fast" or "exact") on a freshly loaded model; returns the model."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels == "fast":
        use_fast_eval_kernels(model)
    return model
