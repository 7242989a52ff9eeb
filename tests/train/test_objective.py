"""The block-diffusion objective: corruption statistics, padding, all-position CE, v2 options, gradient paths."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from toolsel.model.load import load_model
from toolsel.train import objective as O

PAD_TOL = 1e-5  # per-example CE, left-padded batch vs the example alone [measured 1.4e-6]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)[0]


def make_batch(vocab, pads=(0, 7, 13), prompt=48, canvas=32, seed=0):
    """Left-padded batch (prompt 48 > sliding window 32): example i has pads[i] pad positions."""
    rng = np.random.default_rng(seed)
    mask = np.ones((len(pads), prompt), np.int32)
    for i, pad in enumerate(pads):
        mask[i, :pad] = 0
    ids = np.where(mask > 0, rng.integers(3, vocab, mask.shape), 0)
    return {"prompt": mx.array(ids, dtype=mx.int32), "prompt_mask": mx.array(mask),
            "canvas": mx.array(rng.integers(3, vocab, (len(pads), canvas)), dtype=mx.int32)}


def alone(batch, i, pad):
    return {"prompt": batch["prompt"][i:i + 1, pad:], "prompt_mask": batch["prompt_mask"][i:i + 1, pad:],
            "canvas": batch["canvas"][i:i + 1]}


def vocab_of(model):
    return model.config.text_config.vocab_size


def test_corruption_replaces_a_fraction_t_with_uniform_tokens():
    vocab, t_min = 1000, 0.2
    canvas = mx.zeros((64, 4096), dtype=mx.int32)
    noisy, t = O.corrupt(mx.random.key(3), canvas, vocab, t_min)
    t, noisy = np.array(t), np.array(noisy)
    assert t.min() >= t_min and t.max() <= 1.0 and t.std() > 0.1  # one t per example, spread over [t_min, 1]
    replaced = (noisy != 0).mean(axis=1)
    expected = t * (1 - 1 / vocab)  # a uniform draw can hit the original token
    assert np.abs(replaced - expected).max() < 0.03  # 4096 positions: binomial sd <= 0.008
    drawn = noisy[noisy != 0]
    assert drawn.min() >= 1 and drawn.max() == vocab - 1  # the whole vocabulary, nothing beyond
    counts = np.bincount(drawn, minlength=vocab)[1:]
    assert counts.std() / counts.mean() < 0.1  # ~uniform (expected ratio ~0.07)


def test_loss_is_deterministic_given_key(model):
    batch = make_batch(vocab_of(model))
    first, ntokens = O.diffusion_loss(model, batch, mx.random.key(7))
    again, _ = O.diffusion_loss(model, batch, mx.random.key(7))
    other, _ = O.diffusion_loss(model, batch, mx.random.key(8))
    assert first.item() == again.item()
    assert first.item() != other.item()
    assert ntokens.item() == batch["canvas"].size


def test_loss_is_flat_mean_over_every_canvas_position(model):
    batch = make_batch(vocab_of(model))
    key = mx.random.key(1)
    loss, _ = O.diffusion_loss(model, batch, key, t_min=0.5)
    noisy, _ = O.corrupt(mx.random.split(key)[0], batch["canvas"], vocab_of(model), 0.5)
    ce, _ = O.denoising_losses(model, batch, noisy)
    assert ce.shape == batch["canvas"].shape
    assert abs(loss.item() - ce.mean().item()) < 1e-6

    # An uncorrupted position is supervised too: changing its target changes the loss.
    b, j = np.argwhere(np.array(noisy) == np.array(batch["canvas"]))[0]
    changed = dict(batch)
    canvas = np.array(batch["canvas"])
    canvas[b, j] = (canvas[b, j] + 1) % vocab_of(model)
    changed["canvas"] = mx.array(canvas)
    ce_changed, _ = O.denoising_losses(model, changed, noisy)
    assert abs(ce_changed.mean().item() - ce.mean().item()) > 1e-6


@pytest.mark.parametrize("options", [{}, {"with_encoder_loss": True}, {"self_cond": True}])
def test_padded_batch_gives_each_example_its_loss_alone(model, options):
    pads = (0, 7, 13)
    batch = make_batch(vocab_of(model), pads)
    noisy, _ = O.corrupt(mx.random.key(2), batch["canvas"], vocab_of(model), 0.3)
    kwargs = dict(options)
    if kwargs.pop("self_cond", False):
        kwargs["self_cond"] = mx.array([True] * len(pads))
    together, _ = O.denoising_losses(model, batch, noisy, **kwargs)
    for i, pad in enumerate(pads):
        if "self_cond" in kwargs:
            kwargs["self_cond"] = mx.array([True])
        single, _ = O.denoising_losses(model, alone(batch, i, pad), noisy[i:i + 1], **kwargs)
        assert np.abs(np.array(together[i]) - np.array(single[0])).max() < PAD_TOL


def test_encoder_loss_keeps_the_decoder_on_the_prompt_prefix(model):
    batch = make_batch(vocab_of(model))
    noisy, _ = O.corrupt(mx.random.key(4), batch["canvas"], vocab_of(model), 0.5)
    ce_plain, none = O.denoising_losses(model, batch, noisy)
    ce_ar, ar = O.denoising_losses(model, batch, noisy, with_encoder_loss=True)
    assert none is None and np.isfinite(ar.item()) and ar.item() > 0
    # Causal encoder: the prompt's KV is the same whether or not the canvas follows it.
    assert np.abs(np.array(ce_plain) - np.array(ce_ar)).max() < 1e-5
    weighted, _ = O.diffusion_loss(model, batch, mx.random.key(5), encoder_loss_weight=0.5)
    base, _ = O.diffusion_loss(model, batch, mx.random.key(5))
    assert weighted.item() > base.item()


def test_self_conditioning_is_per_example(model):
    batch = make_batch(vocab_of(model))
    noisy, _ = O.corrupt(mx.random.key(6), batch["canvas"], vocab_of(model), 0.5)
    off, _ = O.denoising_losses(model, batch, noisy, joint=False)  # the same graph as the self_cond passes
    on, _ = O.denoising_losses(model, batch, noisy, self_cond=mx.array([True, True, True]))
    mixed, _ = O.denoising_losses(model, batch, noisy, self_cond=mx.array([True, False, True]))
    none, _ = O.denoising_losses(model, batch, noisy, self_cond=mx.array([False, False, False]))
    assert np.array_equal(np.array(none), np.array(off))  # zero self-conditioning == no self-conditioning
    assert np.abs(np.array(on) - np.array(off)).max() > 1e-4
    assert np.array_equal(np.array(mixed[1]), np.array(off[1]))
    assert np.abs(np.array(mixed[0]) - np.array(on[0])).max() < 1e-6


def test_self_cond_prob_selects_examples_by_key(model):
    batch = make_batch(vocab_of(model))
    never, _ = O.diffusion_loss(model, batch, mx.random.key(9), self_cond_prob=0.0)
    always, _ = O.diffusion_loss(model, batch, mx.random.key(9), self_cond_prob=1.0)
    assert never.item() != always.item()
    assert always.item() == O.diffusion_loss(model, batch, mx.random.key(9), self_cond_prob=1.0)[0].item()


def test_gradients_flow_from_decoder_into_encoder_kv(model, monkeypatch):
    """The two-pass path (the joint pass computes the same function: tests/train/test_joint.py)."""
    batch = make_batch(vocab_of(model))
    noisy, _ = O.corrupt(mx.random.key(0), batch["canvas"], vocab_of(model))

    def grads():
        loss_fn = lambda m: O.denoising_losses(m, batch, noisy, joint=False)[0].mean()  # noqa: E731
        _, g = nn.value_and_grad(model, loss_fn)(model)
        return dict(tree_flatten(g))

    full = grads()
    encode = O.encode

    def encode_without_kv_gradient(m, ids, mask):
        hidden, caches = encode(m, ids, mask)
        for cache in caches:
            cache.keys, cache.values = mx.stop_gradient(cache.keys), mx.stop_gradient(cache.values)
        return hidden, caches

    monkeypatch.setattr(O, "encode", encode_without_kv_gradient)
    cut = grads()
    assert all(np.isfinite(np.array(g)).all() for g in full.values())
    # Weights used by the encoder get an extra gradient through the KV the decoder attends to.
    for name in ("model.decoder.layers.0.self_attn.q_proj.weight", "model.decoder.layers.0.mlp.up_proj.weight",
                 "model.decoder.layers.2.experts.gate_up_proj.weight"):
        assert np.abs(np.array(full[name]) - np.array(cut[name])).max() > 1e-7, name
    # The encoder's final norm output is unused without the AR loss: only the decoder's use of it has a gradient.
    name = "model.decoder.norm.weight"
    assert np.array_equal(np.array(full[name]), np.array(cut[name]))


def test_encode_matches_mlx_vlms_own_encoder(model):
    batch = make_batch(vocab_of(model))
    ours, our_caches = O.encode(model, batch["prompt"], batch["prompt_mask"])
    theirs, their_caches = model.model.encoder(batch["prompt"], attention_mask=batch["prompt_mask"],
                                               cache=[O.TrainCache() for _ in model.model.decoder.layers])
    real = np.array(batch["prompt_mask"]) > 0
    assert np.abs(np.array(ours) - np.array(theirs))[real].max() < 1e-6
    keys = np.array(our_caches[0].keys) - np.array(their_caches[0].keys)  # [B, heads, P, dim]
    assert np.abs(keys.transpose(0, 2, 1, 3)[real]).max() < 1e-6
