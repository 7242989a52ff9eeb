"""Vectorisable float32 transcendentals for MLX on CPU: tanh, exp of non-positive arguments, softmax, attention.

mlx's CPU `exp`/`tanh` run one element at a time through libm-style code (~13-17 ns per float here, vs ~0.5 ns for a
multiply: perf on bench/train_step.py and bench/eval_throughput.py), and they are most of a tiny model's time: the
attention and vocabulary softmaxes, the soft-cap, every GeGLU. The functions here use only multiplies, adds, compares,
integer shifts and one divide, which `mx.compile` fuses into loops the C++ compiler vectorises (2.5-6.5 ns per float).
They are approximations with stated error bounds (tests/test_fastmath.py), for the CPU: on a GPU mlx's own kernels
are vectorised already (and a GPU compiler's fast-math could reassociate the rounding below).

Graphs are kept shallow on purpose: `mx.compile` splits an elementwise graph deeper than ~11 ops into strided kernels
that do not vectorise.
"""

from __future__ import annotations

import mlx.core as mx

# tanh(x) ~= x * P(x^2) / Q(x^2) (Eigen's / XLA's float32 minimax for |x| <= 7.9); beyond it tanh is +-1.
_NUM = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
        -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_DEN = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
_SATURATE = 8.020376  # the first float32 argument where the rational function reaches 1.0

# exp(d) = 2^k * e^r with k = round(d / ln 2), r = d - k ln 2 split in two constants (Cody-Waite), e^r by the
# Cephes expf polynomial (|r| <= ln2/2, ~1 ulp). Arguments are clamped at EXP_FLOOR, where the biased exponent k + 127
# reaches 0: the bits of 2^k are then 0.0, so results below ~2^-126 (float32 subnormals) come out exactly 0.
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
EXP_FLOOR = -127.5 / _LOG2E
_MASKED = -1e30  # an additive mask: exp underflows to exactly 0, and a fully masked row stays finite (uniform)


@mx.compile
def _tanh_rational(c):
    # Estrin's scheme: a shallow graph (a deep Horner chain is split into strided kernels that do not vectorise).
    y = c * c
    y2 = y * y
    a, b = _NUM, _DEN
    p = (a[0] + a[1] * y) + y2 * (a[2] + a[3] * y) + (y2 * y2) * ((a[4] + a[5] * y) + y2 * a[6])
    q = (b[0] + b[1] * y) + y2 * (b[2] + b[3] * y)
    return c * p / q


def _unfused(x: mx.array) -> mx.array:
    """x unchanged, through an op `mx.compile` cannot fuse across (a zero-copy bit view there and back): inside a
    compiled graph (training compiles its whole step) it keeps a clamp out of the neighbouring arithmetic's fused
    kernel, where a compare would stop the kernel vectorising; the clamp then runs as mlx's own vectorised op."""
    return mx.view(mx.view(x, mx.int32), mx.float32)


def _clip(x: mx.array, low: float, high: float) -> mx.array:
    """mx.clip of a float32 array as two separate mlx ops, never fused with its neighbours (see `_unfused`)."""
    return _unfused(mx.minimum(_unfused(mx.maximum(_unfused(x), low)), high))


def tanh32(x: mx.array) -> mx.array:
    """float32 tanh from multiplies and one divide: max abs error 3.2e-7, exactly +-1 once saturated (from |x| ~ 8,
    as float32 tanh from ~9: 1 + tanh must reach 0 in the GeGLU's far left tail); NaN stays NaN.

    The clamps are mlx's own (vectorised) ops and only the rational function is a compiled kernel: a compare or
    select inside a fused CPU kernel stops it vectorising (7 ns per float instead of 1.3, all three passes counted).
    The argument is clamped where the rational function first reaches 1 in float32, so clipping its value to
    [-1, 1] saturates it exactly.
    """
    return _clip(_tanh_rational(_clip(x.astype(mx.float32), -_SATURATE, _SATURATE)), -1.0, 1.0)


# Only arithmetic inside the compiled functions: a compare, select, minimum or maximum in a fused CPU kernel stops
# the C++ compiler from vectorising it (measured 4-7 ns per float instead of ~0.7); clamps run as mlx's own ops.
@mx.compile
def _exp_parts(d):
    """For EXP_FLOOR <= d <= 0: e^r and the float32 bits of 2^k, k = round(d / ln 2)."""
    # d*log2(e) + 127.5 lies in [0, 127.5]: truncation is floor there and gives k + 127, the biased exponent
    # (an int conversion vectorises; floor does not without SSE4.1, which mlx's JIT does not enable).
    biased = (d * _LOG2E + 127.5).astype(mx.int32)
    k = biased.astype(mx.float32) - 127.0
    r = (d - k * _LN2_HI) - k * _LN2_LO
    r2 = r * r
    c = _EXP_POLY
    poly = ((c[0] * r + c[1]) * r2 + (c[2] * r + c[3])) * (r2 * r2) + (c[4] * r + c[5]) * r2 + r + 1.0
    return poly, mx.left_shift(biased, 23)


def _exp_clamped(d: mx.array) -> mx.array:
    poly, bits = _exp_parts(d)
    return poly * mx.view(bits, mx.float32)


def exp_shifted(x: mx.array, shift: mx.array) -> mx.array:
    """exp(x - shift) for float32 x - shift <= 0 (a softmax's shifted scores): max relative error 2e-7 down to
    exp(-87.3); smaller results (float32 subnormals) are 0, exp(-inf) is 0 and NaN stays NaN."""
    return _exp_clamped(_floor_clamp(x - shift))


def _floor_clamp(d: mx.array) -> mx.array:
    """max(d, EXP_FLOOR) as mlx's own op (see `_unfused`)."""
    return _unfused(mx.maximum(_unfused(d), EXP_FLOOR))


def softmax32(x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """Softmax over the last axis in float32: (probabilities, the shifted scores x - max clamped at EXP_FLOOR, the
    sums of exp(x - max))."""
    x = x.astype(mx.float32)
    shifted = _floor_clamp(x - mx.stop_gradient(mx.max(x, axis=-1, keepdims=True)))
    e = _exp_clamped(shifted)
    total = mx.sum(e, axis=-1, keepdims=True)
    return e / total, shifted, total


@mx.custom_function
def softmax(x: mx.array) -> mx.array:
    """`softmax32`'s probabilities, differentiable (its exp is built from integer bit operations autodiff cannot
    follow): the VJP is mlx's softmax VJP, p * (g - sum(p * g))."""
    return softmax32(x)[0]


@softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    weighted = output * cotangent
    return weighted - output * mx.sum(weighted, axis=-1, keepdims=True)


def softcap_cross_entropy(logits: mx.array, targets: mx.array, cap: float | None) -> mx.array:
    """Cross-entropy of `cap * tanh(logits / cap)` (in float32; no cap: of the logits) against integer `targets`,
    per position: mlx-vlm's soft-cap then `nn.losses.cross_entropy`, fused into one function differentiable in
    `logits`, with `tanh32` and `exp_shifted` for mlx's scalar tanh and exp."""
    if cap not in _CROSS_ENTROPY:
        _CROSS_ENTROPY[cap] = _make_cross_entropy(cap)
    return _CROSS_ENTROPY[cap](logits, targets)


_CROSS_ENTROPY: dict = {}


def _make_cross_entropy(cap: float | None):
    def capped(logits):  # (z, tanh(logits / cap) or None)
        x = logits.astype(mx.float32)
        if cap is None:
            return x, None
        t = tanh32(x * (1 / cap))
        return t * cap, t

    @mx.custom_function
    def cross_entropy(logits, targets):
        z, _ = capped(logits)
        peak = mx.stop_gradient(mx.max(z, axis=-1, keepdims=True))
        total = mx.sum(exp_shifted(z, peak), axis=-1)
        picked = mx.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
        return mx.log(total) + peak[..., 0] - picked

    @cross_entropy.vjp
    def cross_entropy_vjp(primals, cotangent, output):
        # d/dz = softmax(z) - onehot(target), dz/dx = 1 - t^2. Recomputed from the logits (two cheap passes) rather
        # than keeping a vocabulary-sized probability array alive from the forward pass to the backward pass.
        logits, targets = primals
        z, t = capped(logits)
        index = targets[..., None]
        scale = cotangent[..., None]
        if t is not None:
            scale = scale * (1 - t * t)
        grad = softmax32(z)[0] * scale
        at_target = mx.take_along_axis(grad, index, axis=-1) - (
            scale if t is None else mx.take_along_axis(scale, index, axis=-1))
        grad = mx.put_along_axis(grad, index, at_target, axis=-1)
        return grad.astype(logits.dtype), mx.zeros_like(targets)

    return cross_entropy


def softmax_entropy(x: mx.array) -> tuple[mx.array, mx.array]:
    """(softmax(x), its entropy in nats) over the last axis, from one exp pass.

    H = log(s) - sum(p * (x - max)) with s = sum(exp(x - max)): both terms are small for a peaked distribution, so a
    near-zero entropy (the early-stop test) is not the difference of two large numbers. The shifted scores are the
    clamped ones softmax32 exponentiated (so 0 * -inf cannot make a NaN).
    """
    probs, shifted, total = softmax32(x)
    return probs, mx.log(total[..., 0]) - mx.sum(probs * shifted, axis=-1)


def attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float,
              mask: mx.array | str | None = None) -> mx.array:
    """`mx.fast.scaled_dot_product_attention` (grouped-query; boolean, additive or "causal" mask) with `softmax32`.

    A row whose keys are all masked gets a uniform softmax over them (finite, as mlx's), never NaN: padding rows
    of a left-padded batch must not poison the real rows through 0 * NaN.
    """
    batch, heads, length, dim = queries.shape
    kv_heads, key_length = keys.shape[1], keys.shape[2]
    groups = heads // kv_heads
    q = (queries * scale).reshape(batch, kv_heads, groups, length, dim)
    scores = q @ mx.expand_dims(keys, 2).swapaxes(-1, -2)  # [B, kv heads, groups, L, keys]
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}")
        mask = mx.arange(key_length)[None, :] <= mx.arange(length)[:, None] + (key_length - length)
    if mask is not None:
        if mask.ndim == 3:
            raise ValueError("a 3-d attention mask is ambiguous here; pass [L, keys] or [B, heads or 1, L, keys]")
        if mask.ndim == 4:  # [B, heads or 1, L, keys] (each may be 1) -> the scores' [B, kv heads, groups, L, keys]
            mask = (mx.expand_dims(mask, 2) if mask.shape[1] == 1
                    else mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:]))
        if mask.dtype == mx.bool_:  # as an additive bias: mlx's CPU `where` costs ~4.6 ns per float, an add ~0.5
            mask = (1.0 - mask.astype(mx.float32)) * _MASKED
        scores = scores.astype(mx.float32) + mask.astype(mx.float32)
    probs = softmax(scores)
    out = probs.astype(values.dtype) @ mx.expand_dims(values, 2)
    return out.reshape(batch, heads, length, dim)


def banded_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: mx.array,
                     window: int) -> mx.array:
    """`attention` for a causal sliding-window layer over its own L tokens (an encoder prefill), in O(L * window):
    query block c (`window` rows) only scores keys [(c - 1) * window, (c + 1) * window), which hold every key the
    window lets it see. `mask` is the layer's boolean [L, L] or [B or 1, 1, L, L] mask (window, causality, padding)
    and must already hide everything further back; the blocks' scores come with the same mask entries gathered."""
    batch, heads, length, dim = queries.shape
    kv_heads, groups, w = keys.shape[1], heads // keys.shape[1], window
    blocks = -(-length // w)
    if mask.ndim not in (2, 4):
        raise ValueError(f"banded attention takes a [L, L] or [B, 1, L, L] mask, got shape {mask.shape}")
    mask = mask.reshape(-1, 1, length, length)
    extra = blocks * w - length
    if extra:  # whole blocks: padded queries are dropped at the end, padded keys are masked
        pad = [(0, 0), (0, 0), (0, extra), (0, 0)]
        queries, keys, values = mx.pad(queries, pad), mx.pad(keys, pad), mx.pad(values, pad)
        mask = mx.pad(mask, [(0, 0), (0, 0), (0, extra), (0, extra)], constant_values=False)
    size = blocks * w

    def banded(x):  # [B, kv, size, D] -> [B, kv, 1, blocks, 2w, D]: each block's previous and own keys
        chunks = mx.pad(x, [(0, 0), (0, 0), (w, 0), (0, 0)]).reshape(batch, kv_heads, blocks + 1, w, dim)
        return mx.expand_dims(mx.concatenate([chunks[:, :, :-1], chunks[:, :, 1:]], axis=3), 2)

    q = (queries * scale).reshape(batch, kv_heads, groups, blocks, w, dim)
    scores = (q @ banded(keys).swapaxes(-1, -2)).astype(mx.float32)  # [B, kv, groups, blocks, w, 2w]
    rows = mx.pad(mask, [(0, 0), (0, 0), (0, 0), (w, 0)], constant_values=False)
    rows = rows.reshape(mask.shape[0], 1, blocks, w, size + w)
    columns = mx.arange(blocks)[:, None, None] * w + mx.arange(2 * w)[None, None, :]  # padded key coordinates
    visible = mx.take_along_axis(rows, mx.broadcast_to(columns, (mask.shape[0], 1, blocks, w, 2 * w)), axis=-1)
    bias = (1.0 - visible.astype(mx.float32)) * _MASKED
    probs = softmax(scores + mx.expand_dims(bias, 2))
    out = probs.astype(values.dtype) @ banded(values)
    return out.reshape(batch, heads, size, dim)[:, :, :length]
