"""The CPU speed path computes the same functions: rational tanh, tiled experts, stream shards, compiled steps."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from toolsel.train.fast import linear, tanh32, use_fast_kernels, use_reference_kernels
from toolsel.train.loop import accumulate_gradients, make_value_and_grad
from toolsel.train.lora import prepare_for_training
from toolsel.train.moe import blocked_experts
from toolsel.train.objective import diffusion_loss
from toolsel.train.optim import clip_gradients


def _max_rel_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max((mx.abs(a[k] - b[k]).max().item() / (mx.abs(a[k]).max().item() + 1e-12), k) for k in a)


def test_rational_tanh_is_within_4e7_and_saturates_exactly():
    xs = np.linspace(-30, 30, 600_001).astype(np.float32)
    got = np.array(mx.compile(tanh32)(mx.array(xs)))
    assert np.abs(got - np.tanh(xs.astype(np.float64))).max() < 4e-7
    assert tanh32(mx.array([-9.0, 9.0, -1e30, float("inf")])).tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert tanh32(mx.array([0.0])).item() == 0.0
    assert np.isnan(tanh32(mx.array([float("nan")])).item())  # a diverged run must not report a finite loss


def test_geglu_gradient_in_bf16_stays_close_to_float32():
    """The real 4-bit model runs in bf16: the tanh must not be evaluated in bf16 (it overshoots |t| = 1 there)."""
    from toolsel.train.fast import geglu

    gate = mx.linspace(-8, 8, 4001)
    x = mx.ones_like(gate)
    truth = mx.grad(lambda g: (nn.gelu_approx(g) * x).sum())(gate)
    ours = mx.grad(lambda g: (geglu(g, x.astype(mx.bfloat16)).astype(mx.float32)).sum())(gate.astype(mx.bfloat16))
    assert ours.dtype == mx.bfloat16
    assert mx.abs(ours.astype(mx.float32) - truth).max().item() < 0.02


@pytest.mark.parametrize("routing", ["random", "one_expert", "two_experts", "four_choices"])
def test_tiled_experts_equal_mlx_vlm_experts(tiny_model_dir, load_tiny, routing):
    """Output and every gradient (input and weights), including routings that leave experts empty or put every
    token on one expert (its tiles then span many blocks), and top-4 routing (the input gradient sums 4 rows)."""
    model = load_tiny(tiny_model_dir)
    experts = model.model.decoder.layers[1].experts
    num = experts.gate_up_proj.weight.shape[0]
    x = mx.random.normal((37, experts.gate_up_proj.weight.shape[-1]), key=mx.random.key(0))
    if routing == "random":
        idx = mx.argpartition(mx.random.normal((37, num), key=mx.random.key(1)), kth=-2, axis=-1)[:, -2:]
    elif routing == "one_expert":
        idx = mx.stack([mx.full((37,), num - 1), mx.zeros((37,))], axis=1).astype(mx.int32)
    elif routing == "two_experts":
        idx = mx.stack([mx.full((37,), 2), mx.full((37,), 3)], axis=1).astype(mx.int32)
    else:
        idx = mx.argpartition(mx.random.normal((37, num), key=mx.random.key(1)), kth=-4, axis=-1)[:, -4:]

    def tiled(ex, x):
        return blocked_experts(ex.gate_up_proj, ex.down_proj, ex.activation, ex.hidden_dims, x, idx, block=8)

    assert mx.abs(tiled(experts, x) - experts(x, idx)).max().item() < 1e-5
    for fn in (lambda ex, x: experts(x, idx), tiled):
        value_and_grad = nn.value_and_grad(experts, lambda x, fn=fn: (fn(experts, x) ** 2).sum())
        _, grads = value_and_grad(x)
        dx = mx.grad(lambda x, fn=fn: (fn(experts, x) ** 2).sum())(x)
        mx.eval(grads, dx)
        if fn is tiled:
            assert _max_rel_diff(dict(tree_flatten(ref_grads)), dict(tree_flatten(grads)))[0] < 1e-4
            assert mx.abs(dx - ref_dx).max().item() < 1e-4 * mx.abs(ref_dx).max().item()
        ref_grads, ref_dx = grads, dx


def test_tiled_experts_on_a_quantized_base(tiny_model_dir, load_tiny):
    model = load_tiny(tiny_model_dir)
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda p, m: hasattr(m, "to_quantized")
                and "experts" in p)
    experts = model.model.decoder.layers[0].experts
    assert "scales" in experts.gate_up_proj
    x = mx.random.normal((20, model.config.text_config.hidden_size), key=mx.random.key(2))
    idx = mx.argpartition(mx.random.normal((20, 8), key=mx.random.key(3))[:, :experts.gate_up_proj["scales"].shape[0]],
                          kth=-2, axis=-1)[:, -2:]
    got = blocked_experts(experts.gate_up_proj, experts.down_proj, experts.activation, experts.hidden_dims, x, idx)
    assert mx.abs(got - experts(x, idx)).max().item() < 1e-4


def _grads(value_and_grad, batch, key):
    (loss, _), grads = value_and_grad(batch, key)
    mx.eval(loss, grads)
    return loss.item(), dict(tree_flatten(grads))


def test_shards_on_streams_equal_sequential_accumulation(tiny_model_dir, load_tiny, make_batch):
    """Two shards on two CPU streams = the token-weighted mean of each shard's loss computed alone with its key."""
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    batch, key = make_batch(model.config.text_config.vocab_size, batch=3), mx.random.key(5)
    plain = make_value_and_grad(model, diffusion_loss, False)

    def sharded(batch, key, shards=2):
        grads, loss_sum, ntok, _ = accumulate_gradients(plain, iter([batch]), [key], 1, shards)
        return loss_sum.item() / ntok, dict(tree_flatten(grads))

    loss, grads = sharded(batch, key)
    keys = mx.random.split(key, 2)
    parts = [({k: v[:1] for k, v in batch.items()}, keys[0]), ({k: v[1:] for k, v in batch.items()}, keys[1])]
    total, expected = 0.0, None
    for shard, k in parts:
        shard_loss, shard_grads = _grads(plain, shard, k)
        n = shard["canvas"].size
        total += shard_loss * n
        expected = {name: g * n + (expected[name] if expected else 0) for name, g in shard_grads.items()}
    n_all = batch["canvas"].size
    assert loss == pytest.approx(total / n_all, rel=1e-5)
    assert _max_rel_diff({k: v / n_all for k, v in expected.items()}, grads)[0] < 1e-4
    one_row = {k: v[:1] for k, v in batch.items()}  # fewer rows than shards: the row itself, with the key itself
    assert sharded(one_row, key)[0] == pytest.approx(_grads(plain, one_row, key)[0], rel=1e-6)


def test_compiled_step_equals_plain_and_restores_the_weights(tiny_model_dir, load_tiny, make_batch):
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="lora", rank=4, alpha=8, dropout=0.1)
    use_fast_kernels(model)
    model.train()
    batch, key = make_batch(model.config.text_config.vocab_size), mx.random.key(7)
    mx.random.seed(11)
    loss_plain, plain = _grads(make_value_and_grad(model, diffusion_loss, False), batch, key)
    compiled = make_value_and_grad(model, diffusion_loss, True)
    mx.random.seed(11)  # the same dropout masks: the RNG state is an input of the compiled graph
    loss_compiled, first = _grads(compiled, batch, key)
    assert loss_compiled == pytest.approx(loss_plain, rel=1e-5)
    assert _max_rel_diff(plain, first)[0] < 1e-3
    _, second = _grads(compiled, batch, key)  # the RNG advanced: new dropout masks, different gradients
    assert _max_rel_diff(first, second)[0] > 1e-3
    mx.eval(model.parameters())  # no placeholder from the trace is left in the model


def test_clip_gradients_matches_mlx():
    grads = {"a": mx.random.normal((300, 200), key=mx.random.key(0)) * 3, "b": [mx.random.normal((7,))]}
    for max_norm in (1.0, 1e6):
        ours, norm = clip_gradients(grads, max_norm)
        theirs, their_norm = optim.clip_grad_norm(grads, max_norm)
        assert norm.item() == pytest.approx(their_norm.item(), rel=1e-5)
        assert _max_rel_diff(dict(tree_flatten(theirs)), dict(tree_flatten(ours)))[0] < 1e-5


@pytest.mark.parametrize("clip", [None, 0.5])
def test_update_spread_over_streams_is_bit_identical(clip):
    """Each parameter's AdamW update on its own CPU stream (and clipping fused into it) changes no bit."""
    from mlx.utils import tree_map

    from toolsel.train.loop import make_update
    from toolsel.train.optim import build_optimizer

    results = []
    for streams in (1, 3):
        mx.random.seed(0)
        model = nn.Sequential(nn.Linear(40, 64), nn.Linear(64, 8), nn.Linear(8, 300))
        grads = tree_map(lambda p: mx.random.normal(p.shape, key=mx.random.key(p.size)), model.trainable_parameters())
        opt = build_optimizer(lr=1e-2, lr_min=1e-3, warmup_steps=0, total_steps=3)
        opt.init(model.trainable_parameters())
        update = make_update(model, opt, clip, compiled=True, streams=streams)
        norms = [update(grads) for _ in range(2)]
        mx.eval(model.parameters(), norms)
        results.append((dict(tree_flatten(model.parameters())), [n.item() for n in norms]))
    (params_1, norms_1), (params_3, norms_3) = results
    assert norms_1 == norms_3
    assert all(mx.array_equal(params_1[k], params_3[k]).item() for k in params_1)
    assert "apply_single" not in vars(opt)  # the wrapper is removed again


@pytest.mark.parametrize("clip", [None, 0.5])
def test_fused_adamw_is_mlx_adamw_bit_for_bit(clip):
    """The per-weight compiled AdamW pass (toolsel.train.optim) against mlx's own `AdamW.apply_single`: weights and
    both moments, over several steps of the warmup+cosine schedule, float32 and bfloat16 weights."""
    from mlx.utils import tree_map

    from toolsel.train.loop import make_update
    from toolsel.train.optim import build_optimizer

    results = []
    for fused in (False, True):
        mx.random.seed(0)
        model = nn.Sequential(nn.Linear(40, 64), nn.Linear(64, 300))
        model.layers[1].set_dtype(mx.bfloat16)
        opt = build_optimizer(lr=1e-2, lr_min=1e-3, warmup_steps=2, total_steps=5, weight_decay=0.1)
        opt.init(model.trainable_parameters())
        update = make_update(model, opt, clip, compiled=fused, streams=2)
        for step in range(4):
            grads = tree_map(lambda p: mx.random.normal(p.shape, key=mx.random.key(p.size + step)).astype(p.dtype),
                             model.trainable_parameters())
            mx.eval(update(grads), model.parameters(), opt.state)
        results.append((dict(tree_flatten(model.parameters())), dict(tree_flatten(opt.state))))
    (params_mlx, state_mlx), (params_fused, state_fused) = results
    assert params_mlx.keys() == params_fused.keys() and state_mlx.keys() == state_fused.keys()
    for ours, theirs in ((params_fused, params_mlx), (state_fused, state_mlx)):
        for name in theirs:
            assert ours[name].dtype == theirs[name].dtype, name
            assert mx.array_equal(ours[name], theirs[name]).item(), name
    assert params_fused["layers.1.weight"].dtype == mx.bfloat16


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_linear_equals_mlx_and_its_gradients(dtype):
    """`linear` = x @ w.T, and both gradients are mlx's (the weight's computed as dy^T x instead of (x^T dy)^T)."""
    x = mx.random.normal((3, 37, 64), key=mx.random.key(0)).astype(dtype)
    w = (mx.random.normal((48, 64), key=mx.random.key(1)) * 0.1).astype(dtype)
    c = mx.random.normal((3, 37, 48), key=mx.random.key(2)).astype(dtype)
    assert mx.array_equal(linear(x, w), x @ w.T).item()
    ref = mx.grad(lambda x, w: (x @ w.T * c).sum(), argnums=(0, 1))(x, w)
    ours = mx.grad(lambda x, w: (linear(x, w) * c).sum(), argnums=(0, 1))(x, w)
    for r, o in zip(ref, ours):
        assert o.dtype == dtype and o.shape == r.shape
        r, o = r.astype(mx.float32), o.astype(mx.float32)
        assert mx.abs(o - r).max().item() <= 1e-6 * mx.abs(r).max().item()


def test_linear_gradients_keep_their_inputs_dtypes():
    """A float32 activation against bf16 weights (and the reverse): each gradient in its input's dtype, as mlx's."""
    for x_dtype, w_dtype in ((mx.float32, mx.bfloat16), (mx.bfloat16, mx.float32)):
        x = mx.random.normal((5, 8), key=mx.random.key(0)).astype(x_dtype)
        w = mx.random.normal((3, 8), key=mx.random.key(1)).astype(w_dtype)
        ref = mx.grad(lambda x, w: (x @ w.T).sum(), argnums=(0, 1))(x, w)
        ours = mx.grad(lambda x, w: linear(x, w).sum(), argnums=(0, 1))(x, w)
        assert [g.dtype for g in ours] == [g.dtype for g in ref] == [x_dtype, w_dtype]


def test_fast_kernels_route_linear_layers_and_the_tied_projection(tiny_model_dir, load_tiny):
    """Every bias-free nn.Linear and the embedding's as_linear go through `linear` (values unchanged); eval's
    variant and use_reference_kernels leave mlx's own."""
    model = load_tiny(tiny_model_dir)
    embed = model.model.decoder.embed_tokens
    h = mx.random.normal((2, 5, model.config.text_config.hidden_size), key=mx.random.key(3))
    before = embed.as_linear(h)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)
    use_fast_kernels(model, tiled_experts=False, row_major_grads=False)
    assert all(type(m) is nn.Linear for m in linears) and type(embed) is nn.Embedding
    use_reference_kernels(model)
    use_fast_kernels(model)
    assert all(type(m).__call__ is not nn.Linear.__call__ for m in linears)
    assert type(embed).as_linear is not nn.Embedding.as_linear
    assert mx.array_equal(embed.as_linear(h), before).item()
    use_reference_kernels(model)
    assert all(type(m) is nn.Linear for m in linears) and type(embed) is nn.Embedding
