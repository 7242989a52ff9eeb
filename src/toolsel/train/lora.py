"""LoRA / QLoRA / full fine-tuning set-up and the saved formats, through mlx-vlm's own PEFT layers.

Using mlx-vlm's `prepare_model_for_training` / `LoRALinear` makes our adapters mlx-vlm adapters by construction:
`mlx_vlm.load(base, adapter_path="models/adapter")` reads `adapters.safetensors` + `adapter_config.json` as written
here. Targets are QUALIFIED names (`model.decoder.layers.{i}.self_attn.q_proj`), so a loose suffix such as
`gate_proj` never catches `self_conditioning.gate_proj`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from toolsel.io import write_json

# The recipe's targets, relative to a decoder layer (v_proj exists only on sliding-attention layers).
DEFAULT_TARGETS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
METHODS = ("lora", "full")
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Files of a model directory that a full fine-tune copies from its base unchanged.
_MODEL_DIR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "generation_config.json", "processor_config.json")


def _layers(model) -> list:
    return model.model.decoder.layers


def _module(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def lora_target_names(model, targets=DEFAULT_TARGETS) -> list[str]:
    """Qualified names of the Linear modules to wrap: every decoder layer x every target that exists there."""
    names, found = [], set()
    for i, layer in enumerate(_layers(model)):
        for target in targets:
            if isinstance(_module(layer, target), (nn.Linear, nn.QuantizedLinear)):
                names.append(f"model.decoder.layers.{i}.{target}")
                found.add(target)
    missing = sorted(set(targets) - found)
    if missing:
        raise ValueError(f"LoRA targets not found in any decoder layer: {missing} "
                         f"(use names like {', '.join(DEFAULT_TARGETS[:2])}, relative to a layer)")
    return names


def freeze_buffers(model) -> None:
    """`layer_scalar` is a frozen buffer in the PyTorch reference but a parameter in MLX: keep it fixed."""
    for layer in list(_layers(model)) + list(model.model.encoder.language_model.layers):
        layer.freeze(keys=["layer_scalar"], recurse=False, strict=False)


def prepare_for_training(model, *, method: str = "lora", rank: int = 16, alpha: float = 32.0,
                         dropout: float = 0.0, targets=DEFAULT_TARGETS):
    """Freeze the base and wrap the targets in LoRA (`lora`), or make every weight trainable (`full`).

    A quantized base stays quantized under LoRA (QLoRA); `full` dequantizes every layer first, the routed experts
    included (mlx-vlm's own full set-up leaves quantized experts frozen and quantized, and its saved weights could
    not be loaded back).
    Experts, router, embeddings and self-conditioning stay frozen under LoRA. Seed `mx.random` first: the
    LoRA `A` matrices are drawn from it.
    """
    from mlx_vlm.trainer import prepare_model_for_training

    if method not in METHODS:
        raise ValueError(f"train.method must be one of {METHODS}, got {method!r}")
    if method == "full":
        from toolsel.model.fuse import dequantize_all

        dequantize_all(model)
        prepare_model_for_training(model, train_type="full", verbose=False)
        freeze_buffers(model)
        return model
    names = lora_target_names(model, targets)
    prepare_model_for_training(model, train_type="lora", lora_rank=rank, lora_alpha=alpha, lora_dropout=dropout,
                               target_modules=names, verbose=False)
    return model


def trainable_parameter_count(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def adapter_config(model) -> dict:
    """The config mlx-vlm recorded when the adapters were attached (fine_tune_type, lora_parameters, ...)."""
    config = getattr(model, "_vlm_adapter_config", None)
    if config is None:
        raise ValueError("model has no adapter config: call prepare_for_training first")
    return json.loads(json.dumps(config))


def trainable_weights(model) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def save_safetensors(path: str | os.PathLike, weights: dict[str, mx.array], fmt: str = "mlx") -> None:
    """Atomic write with sorted names: MLX lays tensors out in insertion order, so sorting fixes the bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    mx.save_safetensors(str(tmp), dict(sorted(weights.items())), metadata={"format": fmt})
    os.replace(tmp, path)


def load_trainable(model, path: str | os.PathLike) -> None:
    """Restore exactly the model's trainable weights from `path`; any missing or extra name is an error."""
    weights = mx.load(str(path))
    expected = trainable_weights(model)
    if set(weights) != set(expected):
        extra, missing = sorted(set(weights) - set(expected)), sorted(set(expected) - set(weights))
        raise ValueError(f"{path}: weights do not match the model's trainable parameters "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    bad = [k for k in expected if weights[k].shape != expected[k].shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad[:3]}")
    model.update(tree_unflatten(list(weights.items())))


def save_adapter(model, out_dir: str | os.PathLike) -> Path:
    """`adapters.safetensors` + `adapter_config.json`, the layout `mlx_vlm.load(..., adapter_path=out_dir)` reads."""
    out_dir = Path(out_dir)
    save_safetensors(out_dir / ADAPTER_WEIGHTS, trainable_weights(model))
    write_json(out_dir / ADAPTER_CONFIG, adapter_config(model))
    return out_dir


def save_full_model(model, out_dir: str | os.PathLike, base_dir: str | os.PathLike) -> Path:
    """A complete model directory (base config without quantization, tokenizer files, fp weights in HF spelling).

    `mlx_vlm.load(out_dir)` loads it like the base; `adapter_config.json` says `fine_tune_type: full`.
    """
    from toolsel.model.tiny import hf_spelling

    out_dir, base_dir = Path(out_dir), Path(base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.safetensors"):
        stale.unlink()
    config = json.loads((base_dir / "config.json").read_text())
    for key in ("quantization", "quantization_config"):  # the weights are dequantized now
        config.pop(key, None)
    write_json(out_dir / "config.json", config)
    for name in _MODEL_DIR_FILES:
        if (base_dir / name).exists():
            shutil.copyfile(base_dir / name, out_dir / name)
    save_safetensors(out_dir / "model.safetensors", hf_spelling(dict(tree_flatten(model.parameters()))), fmt="pt")
    write_json(out_dir / ADAPTER_CONFIG, {"fine_tune_type": "full"})
    return out_dir


def save_trained(model, out_dir: str | os.PathLike, base_dir: str | os.PathLike) -> Path:
    """Save whatever `prepare_for_training` made trainable: adapters for LoRA, a full model dir for `full`."""
    if adapter_config(model).get("fine_tune_type") == "full":
        return save_full_model(model, out_dir, base_dir)
    out_dir = Path(out_dir)
    for stale in ("model.safetensors", "config.json"):  # a previous `full` run's files must not linger
        (out_dir / stale).unlink(missing_ok=True)
    return save_adapter(model, out_dir)
