"""Our MLX path against the PyTorch reference (transformers' DiffusionGemmaForBlockDiffusion, fp32 CPU).

One tiny directory with random fp32 weights is loaded by both. The prompt (20) is longer than the sliding window (8),
so the encoder's window and the decoder's trim to the last `window - 1` keys are exercised; example 1 is left-padded.
Tolerances are a few times the differences measured on this CPU (in brackets, initializer_range 0.1).
"""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from toolsel.model.load import load_model
from toolsel.model.tiny import build_tiny, fit_to_tokenizer, init_weights, tiny_config
from toolsel.train import objective as O

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HIDDEN_TOL = 1e-4  # encoder hidden states, max abs [1.8e-5]
LOGIT_TOL = 1e-4  # decoder logits (|logit| up to ~4), max abs [1.5e-5; 2.8e-5 with self-conditioning]
LOSS_TOL = 1e-5  # diffusion CE and encoder AR loss [2e-6]
GRAD_RTOL = 5e-4  # every parameter's gradient, max abs diff / max abs torch gradient [9e-5]
B, P, C, PAD = 2, 20, 16, 6


@pytest.fixture(scope="module")
def pair(tmp_path_factory, model_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_tokenizer_dir), local_files_only=True)
    # A full-attention layer before the last one: the training pass treats the last layer on its own.
    layer_types = ["sliding_attention", "full_attention"] + ["sliding_attention"] * 3 + ["full_attention"]
    config = fit_to_tokenizer(tiny_config(sliding_window=8, canvas_length=C, num_experts=4, initializer_range=0.1,
                                          layer_types=layer_types), tokenizer)
    weights = init_weights(config, seed=0)
    # The real checkpoint scales each layer's output by its own scalar, the encoder's and the decoder's differ.
    for name in weights:
        if name.endswith("layer_scalar"):
            index = int(name.split(".layers.")[1].split(".")[0])
            weights[name] = mx.array([(1.1 if ".encoder." in name else 0.9) + 0.03 * index])
    path = build_tiny(tmp_path_factory.mktemp("parity"), model_tokenizer_dir, config, weights=weights)
    hf_config = json.loads((path / "config.json").read_text())
    # transformers builds a vision tower even for a null config: give it a tiny one (its weights stay random).
    hf_config["vision_config"] = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    reference = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(
        str(path), config=transformers.DiffusionGemmaConfig(**hf_config), attn_implementation="eager"
    ).eval()
    model, _ = load_model(path)
    return reference, model


@pytest.fixture(scope="module")
def data(pair):
    vocab = pair[1].config.text_config.vocab_size
    rng = np.random.default_rng(0)
    low = 16  # ordinary tokens only: mlx-vlm embeds <|image|>/<|video|> as <pad> without pixels, torch does not
    mask = np.ones((B, P), np.int64)
    mask[1, :PAD] = 0
    prompt = np.where(mask > 0, rng.integers(low, vocab, (B, P)), 0)
    return {
        "prompt": prompt,
        "mask": mask,
        "canvas": rng.integers(low, vocab, (B, C)),
        "noisy": rng.integers(low, vocab, (B, C)),
        "sc_logits": (3 * rng.normal(size=(B, C, vocab))).astype(np.float32),
        "vocab": vocab,
    }


def mx_batch(d):
    return {"prompt": mx.array(d["prompt"], dtype=mx.int32), "prompt_mask": mx.array(d["mask"], dtype=mx.int32),
            "canvas": mx.array(d["canvas"], dtype=mx.int32)}


def torch_forward(reference, d, sc_logits=None, sc_mask=None):
    t = torch.tensor
    decoder_mask = np.concatenate([d["mask"], np.ones((B, C), np.int64)], axis=1)
    return reference(
        input_ids=t(d["prompt"]), attention_mask=t(d["mask"]), decoder_input_ids=t(d["noisy"]),
        decoder_attention_mask=t(decoder_mask),
        self_conditioning_logits=None if sc_logits is None else t(sc_logits),
        self_conditioning_mask=None if sc_mask is None else t(sc_mask),
    )


def torch_ce(logits, targets, vocab):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), torch.tensor(targets).reshape(-1))


def test_encoder_hidden_and_decoder_logits_match(pair, data):
    reference, model = pair
    with torch.no_grad():
        out = torch_forward(reference, data)
        out_sc = torch_forward(reference, data, data["sc_logits"])
    batch = mx_batch(data)
    hidden, caches = O.encode(model, batch["prompt"], batch["prompt_mask"])
    real = data["mask"] > 0  # padded positions' hidden states are never read
    assert np.abs(np.array(hidden) - out.encoder_last_hidden_state.numpy())[real].max() < HIDDEN_TOL

    noisy = mx.array(data["noisy"], dtype=mx.int32)
    logits = np.array(O.decode(model, noisy, caches, batch["prompt_mask"]))
    assert np.abs(logits - out.logits.numpy()).max() < LOGIT_TOL
    assert np.abs(logits).max() > 1.0  # not a vacuous comparison of near-zero logits

    sc = O.self_conditioning_embeddings(model, mx.array(data["sc_logits"]))
    logits_sc = np.array(O.decode(model, noisy, caches, batch["prompt_mask"], sc))
    assert np.abs(logits_sc - out_sc.logits.numpy()).max() < LOGIT_TOL
    assert np.abs(logits_sc - logits).max() > 0.5  # self-conditioning really changed the output


def test_diffusion_and_encoder_losses_match(pair, data):
    reference, model = pair
    vocab = data["vocab"]
    with torch.no_grad():
        diffusion_ref = torch_ce(torch_forward(reference, data).logits, data["canvas"], vocab).item()
        sequence = np.concatenate([data["prompt"], data["canvas"]], axis=1)
        seq_mask = np.concatenate([data["mask"], np.ones((B, C), np.int64)], axis=1)
        enc = reference.model.encoder(input_ids=torch.tensor(sequence), attention_mask=torch.tensor(seq_mask))
        cap = reference.final_logit_softcapping
        enc_logits = torch.tanh(reference.lm_head(enc.last_hidden_state) / cap) * cap
        ce = torch.nn.functional.cross_entropy(
            enc_logits[:, :-1].reshape(-1, vocab), torch.tensor(sequence[:, 1:]).reshape(-1), reduction="none"
        ).reshape(B, -1)
        valid = torch.tensor((seq_mask[:, 1:] * seq_mask[:, :-1]).astype(np.float32))
        ar_ref = ((ce * valid).sum() / valid.sum()).item()

    ce_mx, ar_mx = O.denoising_losses(model, mx_batch(data), mx.array(data["noisy"], dtype=mx.int32),
                                      with_encoder_loss=True)
    assert abs(ce_mx.mean().item() - diffusion_ref) < LOSS_TOL
    assert abs(ar_mx.item() - ar_ref) < LOSS_TOL


def test_two_pass_self_conditioning_matches_reference(pair, data):
    """First pass without gradient and zero self-conditioning; example 0 conditions on it, example 1 does not."""
    reference, model = pair
    select = np.array([True, False])
    with torch.no_grad():
        first = torch_forward(reference, data).logits.numpy()
        second = torch_forward(reference, data, first, select)
        ref = torch_ce(second.logits, data["canvas"], data["vocab"]).item()
    ce_mx, _ = O.denoising_losses(model, mx_batch(data), mx.array(data["noisy"], dtype=mx.int32),
                                  self_cond=mx.array(select))
    assert abs(ce_mx.mean().item() - ref) < LOSS_TOL


def test_gradients_match_for_every_parameter(pair, data):
    reference, model = pair
    reference.zero_grad()
    out = torch_forward(reference, data, data["sc_logits"])  # self-conditioning input, or its weights get no gradient
    torch_ce(out.logits, data["canvas"], data["vocab"]).backward()
    torch_grads = {name: p.grad for name, p in reference.named_parameters(remove_duplicate=False)}

    batch, noisy = mx_batch(data), mx.array(data["noisy"], dtype=mx.int32)
    sc_logits = mx.array(data["sc_logits"])

    def loss_fn(m):
        _, caches = O.encode(m, batch["prompt"], batch["prompt_mask"])
        logits = O.decode(m, noisy, caches, batch["prompt_mask"], O.self_conditioning_embeddings(m, sc_logits))
        return nn.losses.cross_entropy(logits, batch["canvas"]).mean()

    _, grads = nn.value_and_grad(model, loss_fn)(model)
    grads = dict(tree_flatten(grads))
    assert len(grads) > 100
    for name, grad in grads.items():
        ref = torch_grads[name.replace(".weight", "") if ".experts." in name else name].numpy()
        scale = np.abs(ref).max()
        assert scale > 0, name
        assert np.abs(np.array(grad) - ref).max() / scale < GRAD_RTOL, name


def test_joint_pass_loss_and_gradients_match_reference(pair, data):
    """Training's default path (prompt and canvas through each layer in one call, tests/train/test_joint.py)
    against the reference's encoder-then-decoder forward, no self-conditioning: the v1 recipe's loss."""
    reference, model = pair
    reference.zero_grad()
    loss_ref = torch_ce(torch_forward(reference, data).logits, data["canvas"], data["vocab"])
    loss_ref.backward()
    torch_grads = {name: p.grad for name, p in reference.named_parameters(remove_duplicate=False)}

    batch, noisy = mx_batch(data), mx.array(data["noisy"], dtype=mx.int32)
    loss, grads = nn.value_and_grad(model, lambda m: O.denoising_losses(m, batch, noisy)[0].mean())(model)
    assert abs(loss.item() - loss_ref.item()) < LOSS_TOL
    grads = dict(tree_flatten(grads))
    assert len(grads) > 100
    for name, grad in grads.items():
        ref = torch_grads[name.replace(".weight", "") if ".experts." in name else name]
        ref = np.zeros(grad.shape, np.float32) if ref is None else ref.numpy()
        scale = np.abs(ref).max()
        if scale == 0:  # the self-conditioning MLP reads zeros without a signal: no gradient on either side
            assert np.abs(np.array(grad)).max() == 0, name
            continue
        assert np.abs(np.array(grad) - ref).max() / scale < GRAD_RTOL, name
