"""A small, documented speed patch for training on CPU: the same activations, without scalar libm calls.

Profiling the training step on Linux CPU (perf, bench/train_step.py) showed ~20% of the time in scalar `powf`,
`tanhf`/`expm1f` and `coshf`: mlx's `gelu_approx` computes `x**3` with `pow` and `tanh` (whose gradient uses
`cosh`) element by element, for every dense MLP, expert and self-conditioning GeGLU and the vocab soft-cap.
The identities below compute the same functions with multiplies and one `sigmoid`:

    0.5 * (1 + tanh(u)) == sigmoid(2u)        x**3 == x * x * x        tanh(v) == 2 * sigmoid(2v) - 1

so results differ from mlx-vlm's only by float32 rounding (activations within 2e-6 absolute).

Tried and not shipped: routed experts as one sgemm per expert (tokens sorted by expert) instead of mlx's per-token
`gather_mm` (sgemv). One MoE block alone went from 82 to 45 ms of CPU time, but the whole training step only from
1.09 to 1.08 s while its peak memory grew from 0.43 to 0.70 GB (bench config, measured interleaved in one process).

tests/train/test_loop.py checks that loss and every gradient agree with mlx-vlm's own kernels. The model code itself
is untouched: the patch swaps the class of this model's MLP, self-conditioning and GeGLU modules for a subclass with
a new `__call__`, and its `_softcap` (per instance; other models in the process are unaffected).
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@partial(mx.compile, shapeless=True)
def geglu(gate, x):
    """gelu_approx(gate) * x, i.e. 0.5*g*(1 + tanh(c*(g + 0.044715 g^3))) * x."""
    return gate * mx.sigmoid(2 * _SQRT_2_OVER_PI * (gate + 0.044715 * (gate * gate * gate))) * x


def softcap(cap: float):
    """tanh(x / cap) * cap in float32, as mlx-vlm's `make_compiled_softcap`."""

    def capped(x):
        return (2 * mx.sigmoid(x.astype(mx.float32) * (2 / cap)) - 1) * cap

    return mx.compile(capped, shapeless=True)


def _mlp_call(self, x):
    return self.down_proj(geglu(self.gate_proj(x), self.up_proj(x)))


def _self_conditioning_call(self, inputs_embeds, self_conditioning_signal):
    normed = self.pre_norm(self_conditioning_signal)
    signal = self.down_proj(geglu(self.gate_proj(normed), self.up_proj(normed)))
    return self.post_norm(inputs_embeds + signal)


def _geglu_call(self, x, gate):
    return geglu(gate, x)


_SUBCLASSES: dict[type, type] = {}


def _swap(module, call) -> None:
    """Give this one module a subclass of its class with `call` as `__call__`."""
    cls = type(module)
    if getattr(cls, "_toolsel_fast", False):
        return
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Fast{cls.__name__}", (cls,), {"__call__": call, "_toolsel_fast": True})
    module.__class__ = _SUBCLASSES[cls]


def use_fast_kernels(model) -> None:
    """Install the patch on this model (idempotent)."""
    if not getattr(model, "_toolsel_fast_softcap", False):
        model._softcap = softcap(float(model.final_logit_softcapping))
        model._toolsel_fast_softcap = True
    decoder = model.model.decoder
    _swap(decoder.self_conditioning, _self_conditioning_call)
    for layer in decoder.layers:
        _swap(layer.mlp, _mlp_call)
        _swap(layer.experts.activation, _geglu_call)


def use_reference_kernels(model) -> None:
    """Undo `use_fast_kernels` (tests compare both)."""
    from mlx_vlm.models.diffusion_gemma import language

    model._softcap = language.make_compiled_softcap(float(model.final_logit_softcapping))
    model._toolsel_fast_softcap = False
    for module in model.modules():
        if getattr(type(module), "_toolsel_fast", False):
            module.__class__ = type(module).__mro__[1]
