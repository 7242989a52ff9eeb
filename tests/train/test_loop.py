"""The training loop: gradient checkpointing keeps every gradient, accumulation equals a big batch, determinism,
validation at a fixed seed, and the optimizer's schedule."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten

from toolsel.train.lora import prepare_for_training, trainable_weights
from toolsel.train.loop import TrainArgs, disable_grad_checkpoint, enable_grad_checkpoint, evaluate, train
from toolsel.train.objective import denoising_losses, diffusion_loss
from toolsel.train.optim import build_optimizer, lr_schedule


def _grads(model, batch, key, **kw):
    value_and_grad = nn.value_and_grad(model, lambda b, k: diffusion_loss(model, b, k, **kw)[0])
    loss, grads = value_and_grad(batch, key)
    mx.eval(loss, grads)
    return loss.item(), dict(tree_flatten(grads))


def _max_rel_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max((mx.abs(a[k] - b[k]).max().item() / (mx.abs(a[k]).max().item() + 1e-12), k) for k in a)


@pytest.mark.parametrize("kw, fast_kernels", [({}, False), ({"encoder_loss_weight": 1.0, "self_cond_prob": 1.0}, True)])
def test_grad_checkpoint_gives_the_same_gradients(tiny_model_dir, load_tiny, make_batch, kw, fast_kernels):
    """All weights trainable, prompt longer than the sliding window, a padded example: every gradient must match,
    including the encoder-side ones that only receive gradient through the decoder's attention to the encoder KV."""
    from toolsel.train.fast import use_fast_kernels

    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    if fast_kernels:
        use_fast_kernels(model)  # the patched layers must survive the checkpoint's recomputation too
    vocab = model.config.text_config.vocab_size
    batch, key = make_batch(vocab), mx.random.key(3)
    loss_plain, plain = _grads(model, batch, key, **kw)
    enable_grad_checkpoint(model)
    loss_ckpt, ckpt = _grads(model, batch, key, **kw)
    disable_grad_checkpoint(model)
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    worst, name = _max_rel_diff(plain, ckpt)
    assert worst < 1e-4, f"{name} differs by {worst:.2e} with gradient checkpointing"
    # The k/v projections feed the decoder only through the encoder cache: their gradient must be real.
    assert mx.abs(plain["model.decoder.layers.0.self_attn.k_proj.weight"]).max().item() > 0


def test_naive_checkpoint_would_be_caught(tiny_model_dir, load_tiny, make_batch):
    """The comparison above is sharp: checkpointing decoder layers with the cache captured (mlx-vlm's
    `grad_checkpoint` style) drops the decoder->encoder-KV gradient and differs by O(1). Self-conditioning keeps
    the loss on the two-pass path (encoder into caches, then decoder), where the decoder reads a cache."""
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    batch, key = make_batch(model.config.text_config.vocab_size), mx.random.key(3)
    _, plain = _grads(model, batch, key, self_cond_prob=1.0)
    layer_cls = type(model.model.decoder.layers[0])

    def naive(self, x, mask=None, cache=None, *, decoder=False, offset=None, layer_scalar=None):
        if not decoder:
            return layer_cls.__call__(self, x, mask, cache, decoder=False, offset=offset, layer_scalar=layer_scalar)

        def inner(params, x):
            self.update(params)
            return layer_cls.__call__(self, x, mask, cache, decoder=True, offset=offset, layer_scalar=layer_scalar)

        return mx.checkpoint(inner)(self.trainable_parameters(), x)

    naive_cls = type("Naive", (layer_cls,), {"__call__": naive})
    for layer in model.model.decoder.layers:
        layer.__class__ = naive_cls
    _, dropped = _grads(model, batch, key, self_cond_prob=1.0)
    assert _max_rel_diff(plain, dropped)[0] > 0.1


def test_fast_kernels_keep_the_numerics(tiny_model_dir, load_tiny, make_batch):
    from mlx_vlm.models.diffusion_gemma import language

    from toolsel.train import fast
    from toolsel.train.fast import use_fast_kernels, use_reference_kernels

    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    batch, key = make_batch(model.config.text_config.vocab_size), mx.random.key(3)
    kw = {"self_cond_prob": 1.0}
    loss_ref, ref = _grads(model, batch, key, **kw)
    use_fast_kernels(model)
    try:
        layer = model.model.decoder.layers[0]
        assert model._toolsel_fast_softcap and language.geglu is not fast.geglu  # nothing process-wide
        assert [type(m).__name__ for m in (layer.mlp, layer.experts.activation)] == ["FastMLP", "FastGeGLU"]
        loss_fast, fast_grads = _grads(model, batch, key, **kw)
    finally:
        use_reference_kernels(model)
    assert loss_fast == pytest.approx(loss_ref, abs=1e-5)
    worst, name = _max_rel_diff(ref, fast_grads)
    assert worst < 1e-3, f"{name} differs by {worst:.2e}"
    gate = mx.linspace(-8, 8, 1001)
    assert mx.abs(fast.geglu(gate, gate) - nn.gelu_approx(gate) * gate).max().item() < 1e-5
    logits = 40 * mx.random.normal((4, 64))
    assert mx.allclose(fast.softcap(30.0)(logits), mx.tanh(logits / 30) * 30, atol=1e-5).item()


def _clean_canvas_loss(model, batch, key):
    # No corruption: each example's loss does not depend on what else is in its batch.
    ce, _ = denoising_losses(model, batch, batch["canvas"])
    return ce.mean(), ce.size


def test_grad_accumulation_equals_one_big_batch(tiny_model_dir, load_tiny, make_batch):
    vocab = 256
    a, b = make_batch(vocab, batch=2, seed=1), make_batch(vocab, batch=2, seed=2)
    big = {k: mx.concatenate([a[k], b[k]]) for k in a}
    results = []
    for batches, accum in (([a, b], 2), ([big], 1)):
        mx.random.seed(0)
        model = load_tiny(tiny_model_dir)
        prepare_for_training(model, method="lora", rank=4, alpha=8)
        # Plain SGD: the weight change is the gradient itself (Adam's first step, g / |g|, would amplify the
        # float32 rounding of near-zero gradient entries into large relative differences).
        opt = optim.SGD(learning_rate=1e-2)
        train(model, opt, _clean_canvas_loss, iter(batches), [], TrainArgs(steps=1, grad_accum=accum, grad_clip=None))
        results.append(trainable_weights(model))
    worst, name = _max_rel_diff(results[1], results[0])
    assert worst < 1e-4, name


def _run(tiny_model_dir, load_tiny, make_batch, steps=4, seed=0, **kw):
    mx.random.seed(0)
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="lora", rank=4, alpha=8)
    vocab = model.config.text_config.vocab_size
    data = [make_batch(vocab, seed=i) for i in range(2)]
    opt = build_optimizer(lr=5e-3, lr_min=5e-4, warmup_steps=1, total_steps=steps)
    reports = []
    state = train(model, opt, diffusion_loss, iter(data * steps), data[:1],
                  TrainArgs(steps=steps, seed=seed, val_every=2, **kw), on_report=reports.append)
    return model, state, reports


def test_training_is_deterministic_and_reports(tiny_model_dir, load_tiny, make_batch):
    m1, s1, reports = _run(tiny_model_dir, load_tiny, make_batch)
    m2, s2, _ = _run(tiny_model_dir, load_tiny, make_batch)
    assert s1.history == s2.history
    w1, w2 = trainable_weights(m1), trainable_weights(m2)
    assert all(mx.array_equal(w1[k], w2[k]).item() for k in w1)
    assert [r["step"] for r in reports] == [1, 2, 3, 4]
    assert ["val_loss" in r for r in reports] == [False, True, False, True]
    assert all(r["tokens_per_sec"] > 0 and r["peak_memory_gb"] > 0 and math.isfinite(r["grad_norm"]) for r in reports)
    assert s1.best_val_loss == min(r["val_loss"] for r in reports if "val_loss" in r)
    _, s3, _ = _run(tiny_model_dir, load_tiny, make_batch, seed=1)  # another seed draws other corruption
    assert s3.history != s1.history


def test_validation_uses_a_fixed_corruption_seed(tiny_model_dir, load_tiny, make_batch):
    model = load_tiny(tiny_model_dir)
    model.train()
    batches = [make_batch(model.config.text_config.vocab_size, seed=i) for i in range(2)]
    first = evaluate(model, diffusion_loss, batches, seed=5)
    assert evaluate(model, diffusion_loss, batches, seed=5) == first
    assert evaluate(model, diffusion_loss, batches, seed=6) != first
    assert model.training  # evaluation runs in eval mode and restores the caller's mode


def test_lr_schedule_warmup_then_cosine():
    schedule = lr_schedule(1e-3, 1e-4, warmup_steps=4, total_steps=20)
    lrs = [schedule(s).item() for s in range(20)]
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[3] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:3], lrs[1:4]))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_optimizer_is_bias_corrected_adamw():
    opt = build_optimizer(lr=1e-3, lr_min=1e-4, warmup_steps=0, total_steps=10, betas=(0.95, 0.99),
                          weight_decay=1e-4)
    assert opt.bias_correction and opt.betas == [0.95, 0.99] and opt.weight_decay == 1e-4
    # With bias correction the first Adam step moves each weight by ~lr (plus decay), whatever the gradient scale.
    params = {"w": mx.ones((3,))}
    new = opt.apply_gradients({"w": mx.array([1e-3, 1.0, 1e3])}, params)
    step = (params["w"] - new["w"]).tolist()
    assert step == pytest.approx([1e-3 * (1 + 1e-4)] * 3, rel=1e-3)
