"""The trainability adapter: mlx-vlm's model cannot be differentiated as shipped; ours can, with identical numerics."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from toolsel.model.patches import TrainableRouter, is_trainable, make_trainable
from toolsel.train.objective import diffusion_loss


@pytest.fixture
def stock_model(tiny_model_dir):
    from mlx_vlm.utils import load_model as mlx_vlm_load_model

    return mlx_vlm_load_model(tiny_model_dir)


def batch_for(model, seed=0):
    vocab = model.config.text_config.vocab_size
    rng = np.random.default_rng(seed)
    return {"prompt": mx.array(rng.integers(3, vocab, (2, 40)), dtype=mx.int32),
            "prompt_mask": mx.ones((2, 40), dtype=mx.int32),
            "canvas": mx.array(rng.integers(3, vocab, (2, 32)), dtype=mx.int32)}


def loss_of(batch):
    return lambda m: diffusion_loss(m, batch, mx.random.key(0), self_cond_prob=0.5)[0]


def test_stock_model_cannot_be_differentiated(stock_model):
    """If mlx-vlm ever fixes its router, this fails: then the patch may be dropped."""
    with pytest.raises(ValueError, match="VJP with respect to indices"):
        nn.value_and_grad(stock_model, loss_of(batch_for(stock_model)))(stock_model)


def test_patch_keeps_logits_bit_identical(stock_model):
    batch = batch_for(stock_model)
    ids = mx.concatenate([batch["prompt"], batch["canvas"]], axis=1)
    before = stock_model(ids[:, :40], canvas_ids=batch["canvas"]).logits
    loss_before = loss_of(batch)(stock_model)
    make_trainable(stock_model)
    assert is_trainable(stock_model) and isinstance(stock_model.model.decoder.layers[3].router, TrainableRouter)
    after = stock_model(ids[:, :40], canvas_ids=batch["canvas"]).logits
    assert np.array_equal(np.array(before), np.array(after))
    assert loss_of(batch)(stock_model).item() == loss_before.item()


def test_patched_model_has_finite_gradients_for_every_trainable_weight(stock_model):
    model = make_trainable(stock_model)
    _, grads = nn.value_and_grad(model, loss_of(batch_for(model)))(model)
    grads = dict(tree_flatten(grads))
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert grads.keys() == trainable.keys()
    assert all(np.isfinite(np.array(g)).all() for g in grads.values())
    for name in ("model.decoder.layers.0.router.proj.weight", "model.decoder.layers.0.experts.gate_up_proj.weight",
                 "model.decoder.layers.5.self_attn.k_proj.weight", "model.decoder.embed_tokens.weight",
                 "model.decoder.self_conditioning.up_proj.weight", "model.decoder.layers.1.router.per_expert_scale"):
        assert np.abs(np.array(grads[name])).max() > 0, name


def test_layer_scalar_stays_frozen_whatever_the_trainer_does(stock_model):
    model = make_trainable(make_trainable(stock_model))  # idempotent

    def scalar_names():
        return [k for k, _ in tree_flatten(model.trainable_parameters()) if "layer_scalar" in k]

    assert scalar_names() == []
    model.unfreeze()
    assert scalar_names() == []
    model.unfreeze(keys=["layer_scalar"])
    assert scalar_names() == []
    all_names = [k for k, _ in tree_flatten(model.parameters())]
    assert sum("layer_scalar" in k for k in all_names) == 12  # still saved and loaded with the weights
    model.freeze()
    model.unfreeze(keys=["weight"])
    assert "model.decoder.layers.0.mlp.up_proj.weight" in dict(tree_flatten(model.trainable_parameters()))
