"""The model-directory validator and loader: clear errors, no code execution, real-shaped quantized directories."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from toolsel.model.load import ModelDirError, load_model, validate_model_dir
from toolsel.model.tiny import copy_tokenizer_files, hf_spelling, init_weights, quantize_tiny, save_safetensors
from toolsel.train.objective import diffusion_loss


def real_shaped_config(vocab_size: int) -> dict:
    """The released config.json's keys and layout (reference.md, "The released model's files"), sizes scaled down:
    hidden 2816->64, 30->6 layers (5 sliding : 1 full), heads 16/8/2 -> 4/2/1, head_dim 256/512 -> 16/32,
    128 experts top-8 -> 8 top-2, canvas 256 -> 64, window 1024 -> 32; bf16; a Gemma 4 vision tower."""
    text = {
        "model_type": "diffusion_gemma_text", "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "moe_intermediate_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_global_key_value_heads": 1, "head_dim": 16, "global_head_dim": 32, "num_experts": 8, "top_k_experts": 2,
        "sliding_window": 32, "max_position_embeddings": 262144, "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "attention_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": True, "use_bidirectional_attention": "vision",
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "dtype": "bfloat16",
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
    }
    vision = {"model_type": "gemma4_vision", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32, "global_head_dim": 32,
              "patch_size": 16, "position_embedding_size": 64, "pooling_kernel_size": 3, "default_output_length": 16}
    return {"architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
            "canvas_length": 64, "text_config": text, "vision_config": vision, "boi_token_id": 255999,
            "eoi_token_id": 258882, "image_token_id": 258880, "video_token_id": 258884,
            "eos_token_id": [1, 106, 50], "initializer_range": 0.02, "tie_word_embeddings": True, "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def real_shaped_4bit(tmp_path_factory, model_tokenizer_dir):
    """bf16 HF-spelled weights with a vision tower, converted like mlx-community's 4-bit (mixed 8/4-bit)."""
    src = tmp_path_factory.mktemp("real-shaped-bf16")
    vocab = len(json.loads((model_tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    config = real_shaped_config(vocab_size=max(vocab, 512))
    weights = {k: v.astype(mx.bfloat16) for k, v in hf_spelling(init_weights(config, seed=0)).items()}
    save_safetensors(src / "model.safetensors", weights)
    (src / "config.json").write_text(json.dumps(config))
    copy_tokenizer_files(model_tokenizer_dir, src)
    return quantize_tiny(src, tmp_path_factory.mktemp("q") / "real-shaped-4bit", dtype="bfloat16")


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_valid_directory_returns_its_config(tiny_model_dir):
    assert validate_model_dir(tiny_model_dir)["model_type"] == "diffusion_gemma"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "config.json").unlink(), "config.json: missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json: invalid JSON"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gemma4"})), "'model_type' is 'gemma4'"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "diffusion_gemma"})), "'text_config'"),
        (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "pytorch_model.bin ignored"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: missing"),
        (lambda d: (d / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})), "model-00001-of-00002"),
    ],
)
def test_invalid_directories_name_the_file_and_field(tmp_path, tiny_model_dir, damage, message):
    broken = copy_dir(tiny_model_dir, tmp_path / "broken")
    damage(broken)
    with pytest.raises(ModelDirError, match=message.replace("(", r"\(")):
        validate_model_dir(broken)


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelDirError, match="not a directory"):
        validate_model_dir(tmp_path / "nope")


def test_code_in_the_directory_never_runs(tmp_path, tiny_model_dir):
    model_dir = copy_dir(tiny_model_dir, tmp_path / "m")
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'w').write('x')\n"
    for name in ("modeling_evil.py", "processing_evil.py", "custom.py"):
        (model_dir / name).write_text(payload)
    (model_dir / "model.bin").write_bytes(b"not a checkpoint")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.Model", "AutoProcessor": "processing_evil.P"}
    (model_dir / "config.json").write_text(json.dumps(config))
    model, tokenizer = load_model(model_dir)
    assert not marker.exists() and len(tokenizer) > 0

    config["model_file"] = "custom.py"  # mlx-vlm would import it
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="model_file"):
        load_model(model_dir)
    assert not marker.exists()


def test_loads_a_real_shaped_4bit_directory(real_shaped_4bit):
    config = validate_model_dir(real_shaped_4bit)
    assert config["quantization"]["bits"] == 4 and config["vision_config"]["model_type"] == "gemma4_vision"
    model, tokenizer = load_model(real_shaped_4bit)
    layer = model.model.decoder.layers[0]
    assert layer.experts.gate_up_proj.bits == 4 and layer.self_attn.q_proj.bits == 8
    assert model.model.decoder.embed_tokens.bits == 8 and model.model.encoder.vision_tower is not None
    full = model.model.decoder.layers[5].self_attn
    assert (full.head_dim, full.n_kv_heads, full.v_proj) == (32, 1, None)
    assert model.config.canvas_length == 64 and model.config.eos_token_id == [1, 106, 50]
    rng = np.random.default_rng(0)
    batch = {"prompt": mx.array(rng.integers(3, 300, (2, 40)), dtype=mx.int32),
             "prompt_mask": mx.ones((2, 40), dtype=mx.int32),
             "canvas": mx.array(rng.integers(3, 300, (2, 64)), dtype=mx.int32)}
    loss, ntokens = diffusion_loss(model, batch, mx.random.key(0))
    assert np.isfinite(loss.item()) and ntokens.item() == 128
