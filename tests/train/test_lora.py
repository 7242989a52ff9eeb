"""LoRA / QLoRA / full set-up, and the saved adapter read back by mlx-vlm's own loader."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_vlm.trainer.peft import LoRALinear

from toolsel.train.lora import (
    lora_target_names,
    prepare_for_training,
    save_trained,
    trainable_parameter_count,
    trainable_weights,
)
from toolsel.train.loop import TrainArgs, train
from toolsel.train.objective import decode, diffusion_loss, encode
from toolsel.train.optim import build_optimizer


def _logits(model, batch) -> mx.array:
    _, caches = encode(model, batch["prompt"], batch["prompt_mask"])
    logits = decode(model, batch["canvas"], caches, batch["prompt_mask"])
    mx.eval(logits)
    return logits


def _randomize_lora(model, seed=1):
    """Non-zero lora_b (it starts at zero), so the adapter visibly changes the logits."""
    weights = trainable_weights(model)
    keys = mx.random.split(mx.random.key(seed), len(weights))
    model.update(tree_unflatten([(k, 0.05 * mx.random.normal(v.shape, key=key))
                                 for key, (k, v) in zip(keys, sorted(weights.items()))]))


def test_targets_are_qualified_and_skip_missing_v_proj(model):
    names = lora_target_names(model)
    layer_types = model.config.text_config.layer_types
    assert len(names) == sum(7 if t == "sliding_attention" else 6 for t in layer_types)
    assert all(n.startswith("model.decoder.layers.") for n in names)
    full = layer_types.index("full_attention")
    assert f"model.decoder.layers.{full}.self_attn.v_proj" not in names
    assert not any("self_conditioning" in n or "experts" in n or "router" in n for n in names)
    with pytest.raises(ValueError, match="not found"):
        lora_target_names(model, ["self_attn.qq_proj"])


def test_lora_freezes_everything_but_the_adapters(model):
    prepare_for_training(model, method="lora", rank=4, alpha=8, dropout=0.0)
    trainable = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert trainable and all(k.endswith((".lora_a", ".lora_b")) for k in trainable)
    assert isinstance(model.model.decoder.self_conditioning.gate_proj, nn.Linear)  # not wrapped
    wrapped = model.model.decoder.layers[0].mlp.gate_proj
    assert isinstance(wrapped, LoRALinear) and wrapped.scale == 2.0
    assert trainable_parameter_count(model) == sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def test_adapter_loads_in_mlx_vlm_and_changes_the_logits(tiny_model_dir, load_tiny, make_batch, tmp_path):
    from mlx_vlm import load

    mx.random.seed(0)
    model = load_tiny(tiny_model_dir)
    batch = make_batch(model.config.text_config.vocab_size)
    base_logits = _logits(model, batch)
    prepare_for_training(model, method="lora", rank=4, alpha=8)
    _randomize_lora(model)
    ours = _logits(model, batch)
    save_trained(model, tmp_path / "adapter", tiny_model_dir)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 4
    saved = mx.load(str(tmp_path / "adapter" / "adapters.safetensors"))
    assert set(saved) == set(trainable_weights(model))

    loaded, _ = load(str(tiny_model_dir), adapter_path=str(tmp_path / "adapter"))
    theirs = _logits(loaded, batch)
    assert mx.abs(ours - base_logits).max().item() > 1e-2  # the adapter does something
    assert mx.allclose(theirs, ours, atol=1e-5).item()  # and mlx-vlm applies every weight of it


def test_save_is_deterministic(tiny_model_dir, load_tiny, tmp_path):
    outs = []
    for name in ("a", "b"):
        mx.random.seed(0)
        model = load_tiny(tiny_model_dir)
        prepare_for_training(model, method="lora", rank=4, alpha=8)
        save_trained(model, tmp_path / name, tiny_model_dir)
        outs.append([(tmp_path / name / f).read_bytes() for f in ("adapters.safetensors", "adapter_config.json")])
    assert outs[0] == outs[1]


def test_qlora_on_a_4bit_base(tiny_model_dir, load_tiny, make_batch, tmp_path):
    from mlx_vlm import load

    from toolsel.model.tiny import quantize_tiny

    qdir = quantize_tiny(tiny_model_dir, tmp_path / "q4", bits=4, group_size=64)
    model = load_tiny(qdir)
    prepare_for_training(model, method="lora", rank=4, alpha=8)
    wrapped = model.model.decoder.layers[0].self_attn.q_proj
    assert isinstance(wrapped, LoRALinear) and isinstance(wrapped.linear, nn.QuantizedLinear)
    vocab = model.config.text_config.vocab_size
    data = [make_batch(vocab, seed=i) for i in range(2)]
    before = trainable_weights(model)
    train(model, build_optimizer(lr=1e-2, lr_min=1e-3, warmup_steps=1, total_steps=2), diffusion_loss,
          iter(data), [], TrainArgs(steps=2))
    after = trainable_weights(model)
    assert any(not mx.array_equal(before[k], after[k]).item() for k in before if k.endswith("lora_b"))
    assert isinstance(model.model.decoder.layers[0].self_attn.q_proj.linear, nn.QuantizedLinear)  # base stays 4-bit

    save_trained(model, tmp_path / "adapter", qdir)
    loaded, _ = load(str(qdir), adapter_path=str(tmp_path / "adapter"))
    model.eval()
    assert mx.allclose(_logits(loaded, data[0]), _logits(model, data[0]), atol=1e-5).item()


def test_full_finetune_saves_a_loadable_model_dir(tiny_model_dir, load_tiny, make_batch, tmp_path):
    from mlx_vlm import load

    model = load_tiny(tiny_model_dir)
    prepare_for_training(model, method="full")
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    everything = {k for k, _ in tree_flatten(model.parameters())}
    assert {k for k in everything - trainable} == {k for k in everything if k.endswith("layer_scalar")}
    vocab = model.config.text_config.vocab_size
    data = [make_batch(vocab, seed=i) for i in range(2)]
    train(model, build_optimizer(lr=1e-3, lr_min=1e-4, warmup_steps=1, total_steps=1), diffusion_loss,
          iter(data), [], TrainArgs(steps=1))
    out = save_trained(model, tmp_path / "full", tiny_model_dir)
    assert json.loads((out / "adapter_config.json").read_text()) == {"fine_tune_type": "full"}
    loaded, _ = load(str(out))
    model.eval()
    assert mx.allclose(_logits(loaded, data[0]), _logits(model, data[0]), atol=1e-5).item()
    base, _ = load(str(tiny_model_dir))
    assert mx.abs(_logits(base, data[0]) - _logits(model, data[0])).max().item() > 1e-4


def test_full_finetune_on_a_4bit_base_trains_every_weight_and_reloads(tiny_model_dir, load_tiny, make_batch,
                                                                      tmp_path):
    from mlx_vlm import load

    from toolsel.model.tiny import quantize_tiny

    qdir = quantize_tiny(tiny_model_dir, tmp_path / "q4", bits=4, group_size=64)
    model = load_tiny(qdir)
    prepare_for_training(model, method="full")
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert not [k for k in trainable if k.endswith(("scales", "biases"))]  # nothing left quantized
    assert "model.decoder.layers.0.experts.gate_up_proj.weight" in trainable  # experts train too
    vocab = model.config.text_config.vocab_size
    data = [make_batch(vocab, seed=i) for i in range(2)]
    train(model, build_optimizer(lr=1e-3, lr_min=1e-4, warmup_steps=1, total_steps=1), diffusion_loss,
          iter(data), [], TrainArgs(steps=1))
    out = save_trained(model, tmp_path / "full", qdir)
    assert "quantization" not in json.loads((out / "config.json").read_text())
    loaded, _ = load(str(out))
    model.eval()
    assert mx.allclose(_logits(loaded, data[0]), _logits(model, data[0]), atol=1e-5).item()
