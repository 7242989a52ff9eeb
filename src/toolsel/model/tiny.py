"""The embedded tiny DiffusionGemma: the real architecture at a size that trains in minutes on 2 CPU cores.

`tiny_config` gives a complete config (every size key, so nothing falls back to the 26B defaults) and `build_tiny`
writes a model directory in the mlx-community layout with the HF weight spelling, loadable by mlx-vlm AND
transformers (shared/docs/reference.md, "The embedded tiny model").
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from toolsel.io import write_json

# Files of a tokenizer directory that travel with the model (whichever the tokenizer builder wrote).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# Top-level config keys; every other override goes to text_config.
_TOP_LEVEL = {"canvas_length", "initializer_range", "image_token_id", "video_token_id", "boi_token_id", "eoi_token_id"}

# Sampler settings of the released model's generation_config.json (reference.md); the sampler config is nested,
# a top-level `entropy_bound` is rejected by transformers and ignored by mlx-vlm.
_GENERATION = {
    "max_denoising_steps": 48,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "t_max": 0.8,
    "t_min": 0.4,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
}


def tiny_config(**overrides: Any) -> dict:
    """A complete tiny DiffusionGemma config (fp32, no vision tower); keyword overrides go to text_config or top level.

    The shape keeps every real-architecture feature: 5 sliding : 1 full attention with distinct head size and KV heads
    on full layers, a dense MLP beside top-k routed experts, self-conditioning, soft-cap 30, tied embeddings. Every
    quantized input dimension divides by 64, so a 4-bit conversion quantizes the same layers as the real model.
    """
    text = {
        "model_type": "diffusion_gemma_text",
        "vocab_size": 2048,  # build_tiny sets it to the tokenizer's size
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_global_key_value_heads": 1,
        "head_dim": 16,
        "global_head_dim": 32,
        "num_experts": 8,
        "top_k_experts": 2,
        "sliding_window": 32,
        "max_position_embeddings": 8192,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": "vision",
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "dtype": "float32",
    }
    top = {"canvas_length": 32, "initializer_range": 0.02}
    for key, value in overrides.items():
        (top if key in _TOP_LEVEL else text)[key] = value
    n_layers = text["num_hidden_layers"]
    if "layer_types" not in overrides:
        text["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]
        text["layer_types"][-1] = "full_attention"  # both libraries force the last layer to full attention
    return {
        "architectures": ["DiffusionGemmaForBlockDiffusion"],
        "model_type": "diffusion_gemma",
        "text_config": text,
        "vision_config": None,  # explicit: a missing key builds the full Gemma 4 vision tower in mlx-vlm
        "tie_word_embeddings": True,
        "dtype": "float32",
        "boi_token_id": None,
        "eoi_token_id": None,
        "image_token_id": None,
        **top,
    }


def fit_to_tokenizer(config: dict, tokenizer) -> dict:
    """`config` with special-token ids from `tokenizer` and exactly its vocabulary size.

    Exactly, not rounded up: an id the tokenizer cannot decode (an untrained model samples them) crashes mlx-vlm's
    detokenizer, and uniform corruption must draw real tokens only. Quantization groups run along the hidden size,
    so the vocabulary size needs no padding.
    """
    config = json.loads(json.dumps(config))
    text = config["text_config"]
    vocab = tokenizer.get_vocab()

    def token_id(token: str) -> int:
        if token not in vocab:
            raise ValueError(f"tokenizer has no {token!r} token (the DiffusionGemma special tokens are required)")
        return vocab[token]

    text["vocab_size"] = max(len(tokenizer), max(vocab.values()) + 1)
    text["pad_token_id"], text["bos_token_id"] = token_id("<pad>"), token_id("<bos>")
    text["eos_token_id"] = token_id("<eos>")
    # As the mlx-community config: <eos>, <turn|> and, when the tokenizer has it, <|tool_response>.
    config["eos_token_id"] = [token_id("<eos>"), token_id("<turn|>")] + (
        [vocab["<|tool_response>"]] if "<|tool_response>" in vocab else []
    )
    config["image_token_id"] = token_id("<|image|>")
    config["video_token_id"] = token_id("<|video|>")
    return config


# Norms that scale what each sublayer adds to the residual stream (Gemma 4 normalizes every sublayer output).
_RESIDUAL_BRANCH_NORMS = (".post_attention_layernorm.weight", ".post_feedforward_layernorm.weight")


def init_weights(config: dict, seed: int, residual_scale: float | None = None) -> dict[str, mx.array]:
    """Random fp32 weights in the MLX spelling: normal(0, initializer_range) matrices, ones for norms and scalars,
    as transformers' `_init_weights` does, except the residual-branch output norms.

    Those start at `residual_scale` (default 1/sqrt(2 * layers), GPT-2's residual scaling): with ones, each of the
    2 * layers sublayers adds a unit-RMS vector to the stream and drowns the canvas token's own embedding, and a
    briefly pretrained tiny model never learns to read its canvas (its LoRA could not fix that: norms are frozen).
    """
    from mlx_vlm.models.diffusion_gemma import Model, ModelConfig

    model = Model(ModelConfig.from_dict(config))
    std = config.get("initializer_range", 0.02)
    layers = config["text_config"]["num_hidden_layers"]
    branch = residual_scale if residual_scale is not None else (2 * layers) ** -0.5
    params = sorted(tree_flatten(model.parameters()))
    keys = mx.random.split(mx.random.key(seed), len(params))
    weights = {}
    for key, (name, value) in zip(keys, params):
        if name.endswith(_RESIDUAL_BRANCH_NORMS):
            weights[name] = mx.full(value.shape, branch, dtype=mx.float32)
        elif value.ndim == 1:  # norm weights, router scales, layer scalars
            weights[name] = mx.ones(value.shape, dtype=mx.float32)
        else:
            weights[name] = std * mx.random.normal(value.shape, dtype=mx.float32, key=key)
    mx.eval(weights)
    return weights


def hf_spelling(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """MLX parameter names -> the HF checkpoint names (stacked experts carry no `.weight` there)."""
    out = {}
    for name, value in weights.items():
        if name.endswith((".experts.gate_up_proj.weight", ".experts.down_proj.weight")):
            name = name[: -len(".weight")]
        out[name] = value
    return out


def build_tiny(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    config: dict | None = None,
    seed: int = 0,
    weights: dict[str, mx.array] | None = None,
) -> Path:
    """Write a tiny DiffusionGemma directory (config, fp32 safetensors, tokenizer, chat template, generation config).

    `weights` (MLX spelling, e.g. after pretraining) replaces the random initialisation drawn from `seed`.
    Returns the directory; same inputs give the same bytes.
    """
    from transformers import PreTrainedTokenizerFast

    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)
    config = fit_to_tokenizer(config or tiny_config(), tokenizer)
    if weights is None:
        weights = init_weights(config, seed)
    rows = weights["model.decoder.embed_tokens.weight"].shape[0]
    if rows != config["text_config"]["vocab_size"]:
        raise ValueError(f"weights have {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(out_dir / "model.safetensors", hf_spelling(weights))
    copy_tokenizer_files(tokenizer_dir, out_dir)
    write_json(out_dir / "config.json", config)
    text = config["text_config"]
    write_json(
        out_dir / "generation_config.json",
        {
            **_GENERATION,
            "max_new_tokens": config["canvas_length"],
            "bos_token_id": text["bos_token_id"],
            "pad_token_id": text["pad_token_id"],
            "eos_token_id": config["eos_token_id"],
        },
    )
    return out_dir


def save_safetensors(path: Path, weights: dict[str, mx.array]) -> None:
    """Atomic safetensors write with sorted names (same weights, same bytes)."""
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")  # hidden: never globbed as a weight file
    mx.save_safetensors(str(tmp), dict(sorted(weights.items())), metadata={"format": "pt"})
    os.replace(tmp, path)


def copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{tokenizer_dir}/tokenizer.json: no tokenizer to copy into the model directory")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)


def quantize_tiny(
    src_dir: str | Path, out_dir: str | Path, bits: int = 4, group_size: int = 64, dtype: str = "float32"
) -> Path:
    """4-bit (or 8-bit) copy of a tiny directory via mlx-vlm's converter: the mlx-community mixed rule
    (embeddings, attention, dense MLP and router at 8-bit; experts and self-conditioning at `bits`)."""
    from mlx_vlm.convert import convert

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # convert refuses to write into an existing directory
    convert(
        hf_path=str(src_dir),
        mlx_path=str(out_dir),
        quantize=True,
        q_bits=bits,
        q_group_size=group_size,
        dtype=dtype,  # float32 by default: on CPU the unquantized parts must be fp32 (gather_mm)
        trust_remote_code=False,
    )
    return out_dir

