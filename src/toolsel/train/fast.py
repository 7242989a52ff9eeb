"""A small, documented speed patch for the model on CPU: the same functions, computed with vectorisable arithmetic.

Profiling the training step on Linux CPU (perf, bench/train_step.py) showed the transcendental functions as the
largest cost after the matmuls: mlx's CPU `exp`/`tanh`/`sigmoid` run one element at a time through libm-style code
(~13-17 ns per float here, vs ~1 ns for a multiply), and the model calls them for every GeGLU (dense MLP, experts,
self-conditioning) and for the vocabulary soft-cap. Here:

- `geglu` and `softcap` use `toolsel.fastmath.tanh32` (a rational minimax tanh, within 4e-7 of the true one, one
  vectorised fused loop), as `mx.custom_function`s with hand-written VJPs, so the backward pass is as short as the
  forward (autodiff through the rational function would be ~30 elementwise ops).
- The routed experts run as `toolsel.train.moe.blocked_experts` (sgemm on tiles of one expert, not sgemv per token).
- Bias-free linear layers and the tied output projection compute their weight gradient row-major (`linear`), as
  the weight is stored, so the passes that follow (shard merge, global norm, AdamW) run contiguous.
- On the CPU, every attention layer runs `toolsel.fastmath.attention` (softmax from a vectorised exp, differentiable)
  instead of mlx's `scaled_dot_product_attention`, whose CPU path (and its VJP) is mostly scalar exp and selects;
  on a GPU mlx's fused attention is kept.
- `fast_cross_entropy(model)` tells the objective to fuse the soft-cap into the loss
  (`toolsel.fastmath.softcap_cross_entropy`): mlx's cross-entropy pays a scalar exp per logit twice.

The forward and backward bodies are compiled functions, so they run as fused loops even outside a compiled graph;
training compiles the whole step (`toolsel.train.loop`). Eval installs the same patch without the tiles and the
linear layers (`toolsel.eval.kernels`). tests/train/test_loop.py and tests/train/test_fast.py check loss and every
gradient against mlx-vlm's own kernels.
The model code itself is untouched: the patch swaps the class of this model's MLP, self-conditioning, GeGLU, Experts,
Attention and Linear modules for a subclass with a new `__call__` (the embedding's: a new `as_linear`), and its
`_softcap` (per instance; other models in the process are unaffected). mlx-vlm's Attention calls the module-level
`scaled_dot_product_attention`: that name is replaced once by a pass-through that takes the fast path only inside a
patched instance's call (a context variable), so every other model, stock generate included, runs mlx-vlm's code
unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import mlx.core as mx
import mlx.nn as nn
from mlx_vlm.models.cache import RotatingKVCache
from mlx_vlm.models.diffusion_gemma import language

from toolsel.fastmath import attention, banded_attention, tanh32
from toolsel.train.moe import blocked_experts

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


@mx.compile
def _gelu_argument(g):
    return _SQRT_2_OVER_PI * (g + _GELU_CUBIC * (g * g * g))


@mx.compile
def _geglu_output(g, t, x):
    return 0.5 * g * (1 + t) * x


@mx.compile
def _geglu_gradients(g, t, x, c):
    slope = 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * g * g)
    return c * x * slope, c * 0.5 * g * (1 + t)


# In float32 whatever the input dtype (the real 4-bit model computes in bf16): the rational tanh evaluated in bf16
# overshoots |t| = 1, and the GeGLU slope near saturation would be off by O(1). Composed of compiled arithmetic and
# tanh32's own clamps rather than one compiled function, so the pieces vectorise when run eagerly (eval); training
# compiles the whole step anyway.
def _geglu_forward(gate, x):
    out = mx.result_type(gate, x)
    g = gate.astype(mx.float32)
    return _geglu_output(g, tanh32(_gelu_argument(g)), x.astype(mx.float32)).astype(out)


def _geglu_backward(gate, x, cotangent):
    g = gate.astype(mx.float32)
    d_gate, d_x = _geglu_gradients(g, tanh32(_gelu_argument(g)), x.astype(mx.float32),
                                   cotangent.astype(mx.float32))
    return d_gate.astype(gate.dtype), d_x.astype(x.dtype)


@mx.custom_function
def geglu(gate, x):
    """gelu_approx(gate) * x, i.e. 0.5*g*(1 + tanh(c*(g + 0.044715 g^3))) * x."""
    return _geglu_forward(gate, x)


@geglu.vjp
def _geglu_vjp(primals, cotangent, output):
    return _geglu_backward(*primals, cotangent)


def softcap(cap: float):
    """tanh(x / cap) * cap in float32, as mlx-vlm's `make_compiled_softcap`."""
    # eager compositions, for the reason given at _geglu_forward
    def forward(x):
        return tanh32(x.astype(mx.float32) * (1 / cap)) * cap

    def backward(x, cotangent):
        t = tanh32(x.astype(mx.float32) * (1 / cap))
        return cotangent * (1 - t * t)

    @mx.custom_function
    def capped(x):
        return forward(x)

    @capped.vjp
    def _capped_vjp(primals, cotangent, output):
        x = primals[0] if isinstance(primals, (list, tuple)) else primals
        return backward(x, cotangent).astype(x.dtype)

    return capped


@mx.custom_function
def linear(x, weight):
    """x @ weight.T, nn.Linear without a bias; its weight gradient is computed row-major, as the weight is stored.

    mlx differentiates `x @ weight.T` into (x^T @ dy) transposed: a column-major view. Every pass over it that also
    reads row-major arrays (AdamW's moments and weights) then runs as a strided CPU loop, or copies it first (the
    global norm's reshape): strided kernels were 10% of a full fine-tune step's CPU samples (perf), and the step
    ran 1.14x faster without them. dy^T @ x gives the same sums row-major. The input gradient is mlx's own."""
    return x @ weight.T


@linear.vjp
def _linear_vjp(primals, cotangent, output):
    x, weight = primals
    rows = cotangent.reshape(-1, cotangent.shape[-1])
    # each in its input's dtype, as mlx's (a float32 activation against bf16 weights promotes the products)
    return (cotangent @ weight).astype(x.dtype), (rows.T @ x.reshape(-1, x.shape[-1])).astype(weight.dtype)


def _linear_call(self, x):
    return linear(x, self["weight"])


def _embedding_as_linear(self, x):
    return linear(x, self.weight)


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


_FAST_ATTENTION = contextvars.ContextVar("toolsel_fast_attention", default=False)
_BANDED_PREFILL = contextvars.ContextVar("toolsel_banded_prefill", default=False)
_STOCK_SDPA = language.scaled_dot_product_attention


def dispatch_sdpa(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
    """mlx-vlm's attention entry point: a joint encoder+decoder call (`toolsel.train.joint.JointMask`) splits into
    its two halves; the fast kernel inside a patched instance's call; else mlx-vlm's own."""
    if hasattr(mask, "split_attention"):
        return mask.split_attention(queries, keys, values, scale, dispatch_sdpa)
    plain_cache = cache is None or not hasattr(cache, "dequantize")  # quantized KV caches keep their own kernels
    if _FAST_ATTENTION.get() and sinks is None and plain_cache:
        window = _prefill_window(queries, keys, cache, mask)
        if window:
            return banded_attention(queries, keys, values, scale, mask, window)
        return attention(queries, keys, values, scale, mask)
    return _STOCK_SDPA(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)


def _prefill_window(queries, keys, cache, mask) -> int:
    """The window of a sliding layer's first prefill under `banded_prefill()` (its boolean mask then hides all but
    the window: mlx-vlm's encoder masks are causal & sliding & padding), when banding pays; else 0."""
    window = getattr(cache, "max_size", None) if isinstance(cache, RotatingKVCache) else None
    length = queries.shape[2]
    if (not _BANDED_PREFILL.get() or not window or length < 3 * window or keys.shape[2] != length
            or not isinstance(mask, mx.array) or mask.dtype != mx.bool_ or mask.shape[-2:] != (length, length)
            or (mask.ndim == 4 and mask.shape[1] != 1) or mask.ndim not in (2, 4)):
        return 0
    return int(window)


@contextlib.contextmanager
def banded_prefill():
    """Inside it (eval's encoder prefill), sliding-window layers attend in blocks: `fastmath.banded_attention`."""
    token = _BANDED_PREFILL.set(True)
    try:
        yield
    finally:
        _BANDED_PREFILL.reset(token)


def _fast_attention_call(self, *args, **kwargs):
    token = _FAST_ATTENTION.set(True)
    try:
        return type(self).__mro__[1].__call__(self, *args, **kwargs)
    finally:
        _FAST_ATTENTION.reset(token)


_SUBCLASSES: dict[tuple, type] = {}


def _swap(module, call, name: str = "__call__") -> None:
    """Give this one module a subclass of its class with `call` as its method `name`."""
    cls = type(module)
    if getattr(cls, "_toolsel_fast", False):
        return
    if (cls, name) not in _SUBCLASSES:
        _SUBCLASSES[cls, name] = type(f"Fast{cls.__name__}", (cls,), {name: call, "_toolsel_fast": True})
    module.__class__ = _SUBCLASSES[cls, name]


def use_fast_kernels(model, tiled_experts: bool = True, row_major_grads: bool = True) -> None:
    """Install the patch on this model (idempotent). `tiled_experts=False` keeps mlx-vlm's expert matmuls (eval:
    a decoding step routes too few tokens per expert for tiles to pay); `row_major_grads=False` keeps mlx's linear
    layers (eval takes no gradients)."""
    if mx.default_device() == mx.cpu:
        language.scaled_dot_product_attention = dispatch_sdpa
        for module in model.modules():
            if isinstance(module, language.Attention):
                _swap(module, _fast_attention_call)
    if not getattr(model, "_toolsel_fast_softcap", False):
        model._softcap = softcap(float(model.final_logit_softcapping))
        model._toolsel_fast_softcap = True
    decoder = model.model.decoder
    if row_major_grads:
        for module in model.modules():  # exact types: quantized layers and LoRA wrappers keep their calls
            if type(module) is nn.Linear and "bias" not in module:
                _swap(module, _linear_call)
        if type(decoder.embed_tokens) is nn.Embedding:  # the tied output projection
            _swap(decoder.embed_tokens, _embedding_as_linear, "as_linear")
    _swap(decoder.self_conditioning, _self_conditioning_call)
    for layer in decoder.layers:
        _swap(layer.mlp, _mlp_call)
        _swap(layer.experts.activation, _geglu_call)
        if tiled_experts:
            _swap(layer.experts, _experts_call)


def fast_cross_entropy(model) -> bool:
    """Whether the objective should use `toolsel.fastmath.softcap_cross_entropy` (the patch is installed)."""
    return bool(getattr(model, "_toolsel_fast_softcap", False))


def use_reference_kernels(model) -> None:
    """Undo `use_fast_kernels` (tests compare both)."""
    model._softcap = language.make_compiled_softcap(float(model.final_logit_softcapping))
    model._toolsel_fast_softcap = False
    model._toolsel_fast_eval = False
    for module in model.modules():
        if getattr(type(module), "_toolsel_fast", False):
            module.__class__ = type(module).__mro__[1]
