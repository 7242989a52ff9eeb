"""The joint pass ([prompt; canvas] through each layer once) computes the two-pass function: encoder into caches,
then the decoder attending to them. Loss per canvas position and every gradient, on a left-padded batch whose
prompt is longer than the sliding window (so the decoder's trim to the last `window - 1` prompt keys matters)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from toolsel.train.fast import use_fast_kernels, use_reference_kernels
from toolsel.train.joint import JointMask
from toolsel.train.lora import prepare_for_training
from toolsel.train.loop import disable_grad_checkpoint, enable_grad_checkpoint
from toolsel.train.objective import corrupt, denoising_losses

CE_TOL = 1e-5  # per-position CE, joint vs two-pass, max abs [measured 0: bit-identical on this CPU]
GRAD_RTOL = 2e-5  # every gradient, max abs diff / max abs two-pass gradient [measured 1.3e-6]


def _losses_and_grads(model, batch, noisy, joint: bool):
    def loss_fn(m):
        ce, _ = denoising_losses(m, batch, noisy, joint=joint)
        return ce.mean(), ce

    (_, ce), grads = nn.value_and_grad(model, loss_fn)(model)
    mx.eval(ce, grads)
    return ce, dict(tree_flatten(grads))


def _distinct_layer_scalars(model):
    """The real model's encoder and decoder scale each layer by their own scalars (the tiny one's are all 1)."""
    for i, (layer, encoder_layer) in enumerate(zip(model.model.decoder.layers, model.model.encoder.language_model.layers)):
        layer.layer_scalar = mx.array([0.9 - 0.05 * i])
        encoder_layer.layer_scalar = mx.array([1.1 + 0.05 * i])


def _assert_same_function(model, batch, noisy):
    _distinct_layer_scalars(model)
    ce_two, two = _losses_and_grads(model, batch, noisy, joint=False)
    ce_joint, joint = _losses_and_grads(model, batch, noisy, joint=True)
    assert mx.abs(ce_joint - ce_two).max().item() < CE_TOL
    assert two.keys() == joint.keys() and len(two) > 50
    for name, grad in two.items():
        scale = mx.abs(grad).max().item()
        diff = mx.abs(joint[name] - grad).max().item()
        assert diff <= GRAD_RTOL * scale + 1e-9, f"{name}: {diff:.2e} vs scale {scale:.2e}"


@pytest.mark.parametrize("fast_kernels", [False, True])
def test_joint_pass_equals_encoder_then_decoder(tiny_model_dir, load_tiny, make_batch, fast_kernels):
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    if fast_kernels:
        use_fast_kernels(model)
    window = model.config.text_config.sliding_window
    batch = make_batch(model.config.text_config.vocab_size, batch=3, prompt=window + 9, pad_first=6)
    noisy, _ = corrupt(mx.random.key(1), batch["canvas"], model.config.text_config.vocab_size)
    try:
        _assert_same_function(model, batch, noisy)
    finally:
        use_reference_kernels(model)


def test_joint_pass_through_full_attention_layers(tmp_path, model_tokenizer_dir, load_tiny, make_batch):
    """Full-attention layers before the last one (the real model has several): their own head size, shared
    keys-as-values and no window trim go through the joint call too."""
    from toolsel.model.tiny import build_tiny, tiny_config

    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    path = build_tiny(tmp_path, model_tokenizer_dir, tiny_config(num_hidden_layers=4, layer_types=layer_types), seed=1)
    model = load_tiny(path)
    prepare_for_training(model, method="full")
    window = model.config.text_config.sliding_window
    batch = make_batch(model.config.text_config.vocab_size, batch=2, prompt=window + 5, pad_first=4)
    noisy, _ = corrupt(mx.random.key(3), batch["canvas"], model.config.text_config.vocab_size)
    _assert_same_function(model, batch, noisy)


def test_joint_pass_with_a_prompt_inside_the_window(tiny_model_dir, load_tiny, make_batch):
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    batch = make_batch(model.config.text_config.vocab_size, prompt=7, pad_first=3)
    _assert_same_function(model, batch, batch["canvas"])


def test_joint_pass_under_gradient_checkpointing(tiny_model_dir, load_tiny, make_batch):
    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    batch = make_batch(model.config.text_config.vocab_size)
    noisy, _ = corrupt(mx.random.key(2), batch["canvas"], model.config.text_config.vocab_size)
    ce_plain, plain = _losses_and_grads(model, batch, noisy, joint=True)
    enable_grad_checkpoint(model)
    try:
        ce_ckpt, ckpt = _losses_and_grads(model, batch, noisy, joint=True)
    finally:
        disable_grad_checkpoint(model)
    assert mx.abs(ce_ckpt - ce_plain).max().item() < 1e-6
    for name, grad in plain.items():
        assert mx.abs(ckpt[name] - grad).max().item() <= 1e-5 * mx.abs(grad).max().item() + 1e-9, name


def test_split_attention_sees_what_each_half_may_see():
    """Prompt rows never see canvas keys; canvas rows see only the last `window` prompt keys on a sliding layer."""
    p, c, window = 6, 3, 4
    queries = mx.zeros((1, 1, p + c, 2))
    keys = mx.zeros((1, 1, p + c, 2))
    values = mx.arange(p + c, dtype=mx.float32)[None, None, :, None] * mx.ones((1, 1, 1, 2))
    seen = []

    def record(q, k, v, cache, scale, mask):
        seen.append((q.shape[2], v[0, 0, :, 0].tolist()))
        return mx.zeros(q.shape)

    out = JointMask(p, None, None, window).split_attention(queries, keys, values, 1.0, record)
    assert out.shape == queries.shape
    assert seen == [(p, [0, 1, 2, 3, 4, 5]), (c, [2, 3, 4, 5, 6, 7, 8])]
