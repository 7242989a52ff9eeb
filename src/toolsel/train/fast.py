"""A small, documented speed patch for training on CPU: the same functions, computed with vectorisable arithmetic.

Profiling the training step on Linux CPU (perf, bench/train_step.py) showed the transcendental functions as the
largest cost after the matmuls: mlx's CPU `exp`/`tanh`/`sigmoid` run one element at a time through libm-style code
(~13-17 ns per float here, vs ~1 ns for a multiply), and the model calls them for every GeGLU (dense MLP, experts,
self-conditioning) and for the vocabulary soft-cap. Here:

- `tanh32` is a rational minimax approximation (the one Eigen and XLA use for float32 tanh), within 4e-7 absolute
  of the true tanh everywhere and exactly +-1 outside [-7.9, 7.9]: only multiplies, adds, a clip and one divide,
  which `mx.compile` fuses into one loop the C++ compiler vectorises (~3 ns per float).
- `geglu` and `softcap` are `mx.custom_function`s with hand-written VJPs, so the backward pass is as short as the
  forward (autodiff through the rational function would be ~30 elementwise ops).
- The routed experts run as `toolsel.train.moe.blocked_experts` (sgemm on tiles of one expert, not sgemv per token).

The forward and backward bodies are compiled functions, so they run as fused loops even outside a compiled graph;
training compiles the whole step (`toolsel.train.loop`). Eval keeps mlx-vlm's exact kernels (bit-equality with stock
`generate`); these decoded the same 84/84 test prompts but only 5% faster. tests/train/test_loop.py and
tests/train/test_fast.py check loss and every gradient against mlx-vlm's own kernels.
The model code itself is untouched: the patch swaps the class of this model's MLP, self-conditioning, GeGLU and
Experts modules for a subclass with a new `__call__`, and its `_softcap` (per instance; other models in the process
are unaffected).
"""

from __future__ import annotations

import math

import mlx.core as mx

from toolsel.train.moe import blocked_experts

# tanh(x) ~= x * P(x^2) / Q(x^2) on [-CLAMP, CLAMP]; beyond it tanh is 1 to float32 precision.
_NUM = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
        -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_DEN = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
_CLAMP = 7.90531110763549805
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


def tanh32(x: mx.array) -> mx.array:
    """float32 tanh from multiplies and one divide (max abs error 4e-7).

    The polynomials are evaluated by Estrin's scheme: a shallow graph stays one fused kernel under `mx.compile`
    (a deep Horner chain is split into strided kernels that do not vectorise).
    """
    c = mx.clip(x, -_CLAMP, _CLAMP)
    y = c * c
    y2 = y * y
    a, b = _NUM, _DEN
    p = (a[0] + a[1] * y) + y2 * (a[2] + a[3] * y) + (y2 * y2) * ((a[4] + a[5] * y) + y2 * a[6])
    q = (b[0] + b[1] * y) + y2 * (b[2] + b[3] * y)
    # Saturate to exactly +-1 (as float32 tanh does from ~9): 1 + tanh must reach 0 in the GeGLU's far left tail.
    # (Compared so that a NaN input stays NaN: a diverged run must not report a finite loss.)
    return mx.where(mx.abs(x) > _CLAMP, mx.sign(x), c * p / q)


def _gelu_tanh(gate):
    return tanh32(_SQRT_2_OVER_PI * (gate + _GELU_CUBIC * (gate * gate * gate)))


# In float32 whatever the input dtype (the real 4-bit model computes in bf16): the rational tanh evaluated in bf16
# overshoots |t| = 1, and the GeGLU slope near saturation would be off by O(1).
@mx.compile
def _geglu_forward(gate, x):
    out = mx.result_type(gate, x)
    g = gate.astype(mx.float32)
    return (0.5 * g * (1 + _gelu_tanh(g)) * x.astype(mx.float32)).astype(out)


@mx.compile
def _geglu_backward(gate, x, cotangent):
    g, x32, c = gate.astype(mx.float32), x.astype(mx.float32), cotangent.astype(mx.float32)
    t = _gelu_tanh(g)
    slope = 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * g * g)
    return (c * x32 * slope).astype(gate.dtype), (c * 0.5 * g * (1 + t)).astype(x.dtype)


@mx.custom_function
def geglu(gate, x):
    """gelu_approx(gate) * x, i.e. 0.5*g*(1 + tanh(c*(g + 0.044715 g^3))) * x."""
    return _geglu_forward(gate, x)


@geglu.vjp
def _geglu_vjp(primals, cotangent, output):
    return _geglu_backward(*primals, cotangent)


def softcap(cap: float):
    """tanh(x / cap) * cap in float32, as mlx-vlm's `make_compiled_softcap`."""
    forward = mx.compile(lambda x: tanh32(x.astype(mx.float32) * (1 / cap)) * cap)
    backward = mx.compile(lambda x, cotangent: cotangent * (1 - tanh32(x.astype(mx.float32) * (1 / cap)) ** 2))

    @mx.custom_function
    def capped(x):
        return forward(x)

    @capped.vjp
    def _capped_vjp(primals, cotangent, output):
        x = primals[0] if isinstance(primals, (list, tuple)) else primals
        return backward(x, cotangent).astype(x.dtype)

    return capped


def _mlp_call(self, x):
    return self.down_proj(geglu(self.gate_proj(x), self.up_proj(x)))


def _self_conditioning_call(self, inputs_embeds, self_conditioning_signal):
    normed = self.pre_norm(self_conditioning_signal)
    signal = self.down_proj(geglu(self.gate_proj(normed), self.up_proj(normed)))
    return self.post_norm(inputs_embeds + signal)


def _geglu_call(self, x, gate):
    return geglu(gate, x)


def _experts_call(self, x, top_k_indices):
    return blocked_experts(self.gate_up_proj, self.down_proj, self.activation, self.hidden_dims, x, top_k_indices)


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
        _swap(layer.experts, _experts_call)


def use_reference_kernels(model) -> None:
    """Undo `use_fast_kernels` (tests compare both)."""
    from mlx_vlm.models.diffusion_gemma import language

    model._softcap = language.make_compiled_softcap(float(model.final_logit_softcapping))
    model._toolsel_fast_softcap = False
    for module in model.modules():
        if getattr(type(module), "_toolsel_fast", False):
            module.__class__ = type(module).__mro__[1]
