"""The embedded tiny DiffusionGemma: complete config, a directory both mlx-vlm and transformers load, 4-bit."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from toolsel.io import sha256_file
from toolsel.model.load import load_model
from toolsel.model.tiny import build_tiny, quantize_tiny, tiny_config

SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "num_global_key_value_heads", "head_dim", "global_head_dim",
             "num_experts", "top_k_experts", "sliding_window", "max_position_embeddings", "layer_types",
             "rope_parameters", "final_logit_softcapping")


def test_config_is_complete_real_architecture_and_quantizable():
    config = tiny_config()
    text = config["text_config"]
    assert config["model_type"] == "diffusion_gemma" and "vision_config" in config and config["vision_config"] is None
    assert all(key in text for key in SIZE_KEYS)  # a missing key falls back to the 26B value in mlx-vlm
    assert text["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert (text["global_head_dim"], text["num_global_key_value_heads"]) != (text["head_dim"], text["num_key_value_heads"])
    assert text["num_experts"] > text["top_k_experts"] > 1 and text["tie_word_embeddings"]
    assert text["final_logit_softcapping"] == 30.0 and text["dtype"] == "float32"
    # Every quantized input dimension divides by 64, or mlx-vlm's converter silently leaves that layer float.
    heads = text["num_attention_heads"]
    for dim in (text["hidden_size"], heads * text["head_dim"], heads * text["global_head_dim"],
                text["intermediate_size"], text["moe_intermediate_size"]):
        assert dim % 64 == 0

    custom = tiny_config(canvas_length=48, hidden_size=128, num_hidden_layers=12)
    assert custom["canvas_length"] == 48 and custom["text_config"]["hidden_size"] == 128
    assert custom["text_config"]["layer_types"].count("full_attention") == 2


def test_build_is_deterministic_and_follows_the_tokenizer(tmp_path, tiny_model_dir, model_tokenizer_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json"} <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"] | {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config["text_config"]["vocab_size"] == len(vocab)  # every id the model can emit decodes
    assert config["text_config"]["pad_token_id"] == vocab["<pad>"] and config["eos_token_id"][1] == vocab["<turn|>"]
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["sampler_config"] == {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1}
    assert "entropy_bound" not in generation

    again = build_tiny(tmp_path / "again", model_tokenizer_dir, tiny_config(), seed=0)
    other = build_tiny(tmp_path / "other", model_tokenizer_dir, tiny_config(), seed=1)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert sha256_file(again / name) == sha256_file(tiny_model_dir / name)
    assert sha256_file(other / "model.safetensors") != sha256_file(tiny_model_dir / "model.safetensors")


def test_mlx_vlm_loads_and_generates(tiny_model_dir):
    import mlx_vlm

    model, processor = mlx_vlm.load(str(tiny_model_dir))
    layers = model.model.decoder.layers
    assert layers[5].self_attn.head_dim == 32 and layers[5].self_attn.n_kv_heads == 1 and layers[5].self_attn.v_proj is None
    assert layers[0].self_attn.head_dim == 16 and layers[0].self_attn.n_kv_heads == 2
    mx.random.seed(0)
    text = mlx_vlm.generate(model, processor, "<|turn>user\nfix the bug<turn|>\n", max_tokens=32, verbose=False).text
    mx.random.seed(0)
    assert text == mlx_vlm.generate(model, processor, "<|turn>user\nfix the bug<turn|>\n", max_tokens=32,
                                    verbose=False).text
    assert isinstance(text, str) and text


def test_transformers_loads_the_same_directory(tiny_model_dir):
    transformers = pytest.importorskip("transformers")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    # transformers builds a vision tower even for a null config; a tiny one keeps the test fast.
    config["vision_config"] = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    model, info = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(
        str(tiny_model_dir), config=transformers.DiffusionGemmaConfig(**config), output_loading_info=True
    )
    assert [k for k in info["missing_keys"] if "vision" not in k] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    full = model.model.decoder.layers[5].self_attn
    assert full.head_dim == 32 and full.k_proj.out_features == 32  # global head size and KV heads were read
    encoder_q = model.model.encoder.language_model.layers[0].self_attn.q_proj.weight
    assert encoder_q.data_ptr() == model.model.decoder.layers[0].self_attn.q_proj.weight.data_ptr()


def test_four_bit_conversion_keeps_the_mlx_community_mixed_rule(tmp_path, tiny_model_dir):
    quantized = quantize_tiny(tiny_model_dir, tmp_path / "q4")
    model, tokenizer = load_model(quantized)
    layer = model.model.decoder.layers[0]
    assert layer.experts.gate_up_proj.bits == 4 and layer.experts.down_proj.bits == 4
    assert model.model.decoder.self_conditioning.gate_proj.bits == 4
    for module in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj, layer.router.proj,
                   model.model.decoder.embed_tokens):
        assert module.bits == 8
    assert isinstance(model.model.decoder.layers[5].self_attn.o_proj, nn.QuantizedLinear)  # 128 inputs
    float_params = [k for k, v in tree_flatten(model.parameters()) if v.dtype == mx.float32 and not k.endswith(
        (".scales", ".biases"))]
    assert all(v.ndim == 1 for k, v in tree_flatten(model.parameters()) if k in float_params)  # only norms/scalars
    ids = mx.array([[2, 10, 11, 12]])
    mx.random.seed(0)
    assert model.generate(ids, tokenizer=tokenizer, gen_length=8).shape[0] == 1


def test_trained_weights_round_trip_through_the_directory(tmp_path, tiny_model_dir, model_tokenizer_dir):
    """The base stage's path: load, change the weights (pretraining), write them back, load the same numbers."""
    model, _ = load_model(tiny_model_dir)
    weights = {k: v * 1.5 for k, v in tree_flatten(model.parameters())}
    out = build_tiny(tmp_path / "trained", model_tokenizer_dir, tiny_config(), weights=weights)
    reloaded = dict(tree_flatten(load_model(out)[0].parameters()))
    assert reloaded.keys() == weights.keys()
    assert all(mx.array_equal(reloaded[k], weights[k]).item() for k in weights)
    with pytest.raises(ValueError, match="embedding rows"):
        wrong = dict(weights, **{"model.decoder.embed_tokens.weight": mx.zeros((7, 64))})
        build_tiny(tmp_path / "wrong", model_tokenizer_dir, tiny_config(), weights=wrong)


def test_eight_bit_conversion_loads(tmp_path, tiny_model_dir):
    model, _ = load_model(quantize_tiny(tiny_model_dir, tmp_path / "q8", bits=8))
    assert model.model.decoder.layers[0].experts.gate_up_proj.bits == 8
