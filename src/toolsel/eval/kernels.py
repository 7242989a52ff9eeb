"""`eval.kernels: fast`: decode with vectorisable float32 transcendentals on the CPU (`toolsel.fastmath`).

perf on bench/eval_throughput.py (the pipeline's fused model, 84 test prompts) put ~55% of decoding in mlx's scalar
CPU exp/tanh/pow: the attention softmaxes, the vocabulary soft-cap, the sampler's entropy and the self-conditioning
softmax, every GeGLU. `use_fast_eval_kernels` swaps, on this one model instance:

- GeGLU (dense MLP, experts, self-conditioning) and the soft-cap: `toolsel.train.fast` (rational tanh);
- attention: `toolsel.fastmath.attention` (its softmax from a vectorised exp) for every attention layer, encoder
  prefill and decoder;

and `toolsel.eval.decode` then takes the sampler's entropy, confidence and self-conditioning probabilities from one
fast softmax instead of three mlx exp passes. Each function is within ~4e-7 of mlx's (tests/test_fastmath.py), so
the logits move by rounding only: decisions agree with stock generate except at exact near-ties (83/84 test prompts
decoded identically on the pipeline's fused model, bench/eval_throughput.py; exact: 84/84). `exact` keeps mlx-vlm's kernels, bit-identical to stock `generate`.

On a GPU mlx's kernels are vectorised already: `fast` changes nothing there.
"""

from __future__ import annotations

import mlx.core as mx

from toolsel.train.fast import use_fast_kernels

KERNELS = ("fast", "exact")


def use_fast_eval_kernels(model) -> bool:
    """Install the fast kernels on this model when computing on the CPU (idempotent); returns whether it did."""
    if mx.default_device() != mx.cpu:
        return False
    use_fast_kernels(model, tiled_experts=False, row_major_grads=False)
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
