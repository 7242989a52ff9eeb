"""The vectorisable float32 kernels against float64 NumPy and mlx's own ops, with the error bounds the docs state."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx.nn as nn

from toolsel.fastmath import (EXP_FLOOR, attention, banded_attention, exp_shifted, softcap_cross_entropy, softmax, softmax32,
                              softmax_entropy, tanh32)


def test_exp_is_within_2e7_relative_and_flushes_below_the_floor():
    xs = np.linspace(-87.3, 0, 1_000_001).astype(np.float32)
    got = np.array(exp_shifted(mx.array(xs), mx.array(0.0)))
    exact = np.exp(xs.astype(np.float64))
    assert (np.abs(got - exact) / exact).max() < 2e-7
    shifted = np.array(exp_shifted(mx.array([3.0, 5.0]), mx.array(5.0)))  # exp(x - shift)
    assert np.allclose(shifted, [np.exp(-2.0), 1.0], rtol=2e-7)
    edge = exp_shifted(mx.array([-np.inf, -1000.0, EXP_FLOOR - 1, 0.0]), mx.array(0.0)).tolist()
    assert edge == [0.0, 0.0, 0.0, 1.0]
    assert np.isnan(exp_shifted(mx.array([np.nan]), mx.array(0.0)).item())


def test_tanh_saturates_exactly_and_stays_within_4e7():
    xs = np.linspace(-30, 30, 600_001).astype(np.float32)
    assert np.abs(np.array(tanh32(mx.array(xs))) - np.tanh(xs.astype(np.float64))).max() < 4e-7
    assert tanh32(mx.array([-8.1, 8.1, -1e30, np.inf])).tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert np.isnan(tanh32(mx.array([np.nan])).item())


def test_softmax_and_entropy_match_mlx():
    rng = np.random.default_rng(0)
    logits = mx.array(rng.normal(0, 6, (4, 16, 512)).astype(np.float32))
    probs, entropy = softmax_entropy(logits)
    reference = mx.softmax(logits, axis=-1, precise=True)
    log_probs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    assert mx.abs(probs - reference).max().item() < 1e-6
    assert mx.abs(entropy - (-(mx.exp(log_probs) * log_probs).sum(-1))).max().item() < 2e-5
    # a peaked row: the early-stop test compares entropies near 0, which must not be a difference of large numbers
    peaked = mx.array([[60.0, 0.0, -5.0, 3.0]])
    true = -sum(p * np.log(p) for p in np.exp([60.0, 0, -5, 3]) / np.exp([60.0, 0, -5, 3]).sum() if p > 0)
    assert abs(softmax_entropy(peaked)[1].item() - true) < 1e-9 + 1e-5 * true


def test_kernels_compute_the_same_inside_a_compiled_graph():
    """Compiled (training compiles its whole step) the clamps stay separate ops: the values must not change."""
    xs = mx.array(np.linspace(-30, 30, 10_001).astype(np.float32))
    assert mx.array_equal(mx.compile(lambda x: tanh32(x * 0.5) * 2)(xs), tanh32(xs * 0.5) * 2).item()
    assert mx.array_equal(mx.compile(lambda x: softmax32(x)[0])(xs), softmax32(xs)[0]).item()


def test_softmax_gradient_matches_mlx():
    rng = np.random.default_rng(2)
    x = mx.array(rng.normal(0, 4, (3, 7, 50)).astype(np.float32))
    weights = mx.array(rng.normal(size=(3, 7, 50)).astype(np.float32))
    ours = mx.grad(lambda x: (softmax(x) * weights).sum())(x)
    theirs = mx.grad(lambda x: (mx.softmax(x, axis=-1, precise=True) * weights).sum())(x)
    assert mx.abs(ours - theirs).max().item() < 1e-6


@pytest.mark.parametrize("cap", [30.0, None])
def test_softcap_cross_entropy_matches_softcap_then_mlx_cross_entropy(cap):
    rng = np.random.default_rng(3)
    logits = mx.array(rng.normal(0, 25, (2, 9, 300)).astype(np.float32))
    targets = mx.array(rng.integers(0, 300, (2, 9)).astype(np.int32))
    weights = mx.array(rng.normal(size=(2, 9)).astype(np.float32))  # a cotangent that differs per position

    def reference(x):
        capped = x if cap is None else mx.tanh(x / cap) * cap
        return (nn.losses.cross_entropy(capped, targets, reduction="none") * weights).sum()

    ours, ours_grad = mx.value_and_grad(lambda x: (softcap_cross_entropy(x, targets, cap) * weights).sum())(logits)
    theirs, theirs_grad = mx.value_and_grad(reference)(logits)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-4)
    assert mx.abs(ours_grad - theirs_grad).max().item() < 2e-6
    assert mx.abs(ours_grad).sum().item() > 1  # not vacuous
    per_position = softcap_cross_entropy(logits, targets, cap)
    assert per_position.shape == targets.shape


def test_softmax_of_a_fully_masked_row_is_finite():
    probs, _, _ = softmax32(mx.array([[-1e30, -1e30, -1e30]]))
    assert np.allclose(np.array(probs), 1 / 3)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "causal", "padded"])
def test_attention_matches_mlx_sdpa(mask_kind):
    rng = np.random.default_rng(1)
    batch, heads, kv_heads, length, keys, dim = 2, 4, 2, 5, 9, 8
    q, k, v = (mx.array(rng.normal(size=shape).astype(np.float32)) for shape in
               ((batch, heads, length, dim), (batch, kv_heads, keys, dim), (batch, kv_heads, keys, dim)))
    if mask_kind == "causal":
        k, v, keys = k[:, :, :length], v[:, :, :length], length
    mask = {"none": None, "causal": "causal",
            "bool": mx.array(rng.random((batch, 1, length, keys)) > 0.3),
            "additive": mx.array(rng.normal(size=(1, heads, length, keys)).astype(np.float32)),
            "padded": mx.array(np.arange(keys)[None, None, None, :] >= np.array([0, 3])[:, None, None, None])
            }[mask_kind]
    got = attention(q, k, v, 0.35, mask)
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.35, mask=mask)
    assert mx.abs(got - expected).max().item() < 1e-5
    # and its gradients (training runs it), for every input
    cotangent = mx.array(rng.normal(size=got.shape).astype(np.float32))
    ours = mx.grad(lambda *qkv: (attention(*qkv, 0.35, mask) * cotangent).sum(), argnums=(0, 1, 2))(q, k, v)
    theirs = mx.grad(lambda *qkv: (mx.fast.scaled_dot_product_attention(*qkv, scale=0.35, mask=mask)
                                   * cotangent).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        assert mx.abs(a - b).max().item() < 1e-5


def test_attention_keeps_a_fully_masked_query_finite():
    """Left padding: a padding query sees no key. It must stay finite, or 0 * NaN poisons the real rows later."""
    q, k, v = mx.ones((1, 2, 3, 4)), mx.ones((1, 1, 3, 4)), mx.ones((1, 1, 3, 4))
    mask = mx.array([[[[False, False, False], [True, True, False], [True, True, True]]]])
    assert not mx.isnan(attention(q, k, v, 0.5, mask)).any().item()


@pytest.mark.parametrize("length,window,mask_rank", [(256, 32, 4), (100, 32, 4), (75, 16, 2)])
def test_banded_attention_equals_full_attention_on_a_sliding_window(length, window, mask_rank):
    """Block-banded sliding-window attention (eval's encoder prefill) against the full [L, L] computation, with
    left padding, lengths that are not whole blocks and grouped heads: equal on every real query within rounding."""
    batch, heads, kv_heads, dim = 3, 4, 2, 16
    q, k, v = (mx.random.normal((batch, n, length, dim), key=mx.random.key(i))
               for i, n in enumerate((heads, kv_heads, kv_heads)))
    pos = mx.arange(length)
    sliding = (pos[:, None] >= pos[None, :]) & (pos[:, None] < pos[None, :] + window)
    starts = np.array([0, 17, length // 2])[:, None]
    real = mx.array(np.arange(length)[None, :] >= starts)
    mask = sliding if mask_rank == 2 else sliding[None, None] & real[:, None, None, :]
    full, banded = attention(q, k, v, 0.25, mask), banded_attention(q, k, v, 0.25, mask, window)
    rows = np.ones((batch, length), dtype=bool) if mask_rank == 2 else np.array(real)
    diff = np.abs(np.array(full) - np.array(banded)).max(axis=(1, 3))[rows]
    assert diff.max() < 1e-6
    assert np.isfinite(np.array(banded)).all()  # fully masked padding queries stay finite
    wider = banded_attention(q, k, v, 0.25, mask, 2 * window)  # a block wider than the window: still exact
    assert np.abs(np.array(wider) - np.array(full)).max(axis=(1, 3))[rows].max() < 1e-6
