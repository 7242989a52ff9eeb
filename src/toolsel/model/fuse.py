"""Merge a trained adapter into its base and write a model directory that stock mlx-vlm loads and generates from.

LoRA layers fuse through mlx-vlm's own `LoRALinear.fuse` (W + scale * B^T A^T): a quantized base layer is
dequantized, merged and re-quantized with its own bits and group size, so the mlx-community mixed rule (embeddings,
attention, dense MLP, router at 8 bits; experts and self-conditioning at 4) survives the fuse. `dequantize=True`
writes every layer in float instead. A full fine-tune (`fine_tune_type: full`, trained weights in float) is written
in the base's format: re-quantized by the base's own `quantization` block unless `dequantize`.
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

ADAPTER_CONFIG = "adapter_config.json"
# Everything a model directory carries besides config.json and the weights (copied from the base when present).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "chat_template.json", "generation_config.json", "processor_config.json")
QUANTIZATION_KEYS = ("quantization", "quantization_config")
SHARD_BYTES = 5 << 30  # mlx-community's shard size


def adapter_kind(adapter_dir: str | os.PathLike) -> str:
    """`lora`, `dora` or `full`, from the adapter's adapter_config.json."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not an mlx-vlm adapter or full fine-tune directory)")
    kind = json.loads(path.read_text()).get("fine_tune_type", "lora")
    if kind not in ("lora", "dora", "full"):
        raise ValueError(f"{path}: field 'fine_tune_type' is {kind!r}; expected lora, dora or full")
    return kind


def fuse_lora_layers(model: nn.Module, dequantize: bool = False) -> int:
    """Replace every module that has `fuse()` (LoRA/DoRA layers) by its merged layer; returns how many.

    A quantized base layer is re-quantized with its own bits, unless `dequantize` (then merged in float, exactly).
    """
    fused = [(name, module.fuse(dequantize=dequantize)) for name, module in model.named_modules()
             if hasattr(module, "fuse") and callable(module.fuse)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def dequantize_all(model: nn.Module) -> int:
    """Float versions of every quantized Linear, Embedding and expert SwitchLinear; returns how many."""
    from mlx_vlm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    replaced = []
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear)):
            continue
        weight = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=layer.group_size,
                               bits=layer.bits, mode=getattr(layer, "mode", "affine"))
        if isinstance(layer, QuantizedSwitchLinear):
            experts, out_dims, in_dims = weight.shape
            new = SwitchLinear(in_dims, out_dims, experts, bias="bias" in layer)
        elif isinstance(layer, nn.QuantizedLinear):
            new = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in layer)
        else:
            new = nn.Embedding(weight.shape[0], weight.shape[1])
        new.weight = weight
        if "bias" in layer:
            new.bias = layer.bias
        replaced.append((name, new))
    if replaced:
        model.update_modules(tree_unflatten(replaced))
    return len(replaced)


def quantize_like(model: nn.Module, quantization: dict) -> None:
    """Quantize `model` by a config.json `quantization` block: per-module entries (a dict or False) win, the
    top-level group_size/bits apply to every other quantizable layer whose input divides by the group size."""
    default = {k: quantization[k] for k in ("group_size", "bits", "mode") if k in quantization}

    def predicate(path: str, module: nn.Module):
        if path in quantization:
            return quantization[path]
        if not hasattr(module, "to_quantized") or not hasattr(module, "weight"):
            return False
        return module.weight.shape[-1] % default["group_size"] == 0

    nn.quantize(model, group_size=default["group_size"], bits=default["bits"],
                mode=default.get("mode", "affine"), class_predicate=predicate)


def hf_weight_names(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Float stacked experts in the HF spelling (no `.weight`), as the tiny base is written, so transformers reads
    the directory too; quantized experts keep mlx-community's `.weight/.scales/.biases` (both load in mlx-vlm)."""
    out = {}
    for name, value in weights.items():
        stem = name[: -len(".weight")] if name.endswith(".weight") else None
        if stem and stem.endswith((".experts.gate_up_proj", ".experts.down_proj")) and f"{stem}.scales" not in weights:
            name = stem
        out[name] = value
    return out


def save_weights(out_dir: Path, weights: dict[str, mx.array]) -> list[str]:
    """Sorted names in one `model.safetensors`, or 5 GB shards plus an index (same weights, same bytes)."""
    names = sorted(weights)
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = weights[name].nbytes
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for file, shard in zip(files, shards):
        tmp = out_dir / f".{file[: -len('.safetensors')]}.tmp.safetensors"  # mlx appends the suffix otherwise
        mx.save_safetensors(str(tmp), {n: weights[n] for n in shard}, metadata={"format": "mlx"})
        os.replace(tmp, out_dir / file)
    if len(shards) > 1:
        write_json(out_dir / "model.safetensors.index.json",
                   {"metadata": {"total_size": sum(w.nbytes for w in weights.values())},
                    "weight_map": {n: f for f, shard in zip(files, shards) for n in shard}})
    return files


def fuse_model(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
               dequantize: bool = False) -> dict:
    """Base + adapter -> a complete model directory at `out_dir` (replaced); returns a small summary.

    `base_dir` is a model directory (not the base stage's identity record); `adapter_dir` holds adapter_config.json
    and either adapters.safetensors (LoRA/DoRA) or a full model directory (full fine-tune).
    """
    from toolsel.model.load import load_model

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if out_dir.resolve() in (base_dir.resolve(), adapter_dir.resolve()):
        raise ValueError(f"{out_dir}: the fused model cannot replace its own base or adapter")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise ValueError(f"{out_dir}: exists and is not a model directory; refusing to replace it")
    kind = adapter_kind(adapter_dir)
    config = json.loads((base_dir / "config.json").read_text())
    quantization = config.get("quantization")
    if kind == "full":
        model, _ = load_model(adapter_dir)  # the trained weights, float
        merged = 0
        if quantization and not dequantize:
            quantize_like(model, quantization)
    else:
        model, _ = load_model(base_dir, adapter_path=adapter_dir)
        merged = fuse_lora_layers(model, dequantize)
        if merged == 0:
            raise ValueError(f"{adapter_dir}: the adapter attached no LoRA layer to {base_dir}; nothing to fuse")
    if dequantize:
        dequantize_all(model)
    quantized = not dequantize and bool(quantization)
    if not quantized:
        for key in QUANTIZATION_KEYS:
            config.pop(key, None)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    files = save_weights(out_dir, weights if quantized else hf_weight_names(weights))
    write_json(out_dir / "config.json", config)
    for name in SIDE_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    return {"kind": kind, "merged_layers": merged, "quantized": quantized, "weight_files": files,
            "parameters": int(sum(w.size for w in weights.values())),
            "bytes": int(sum((out_dir / f).stat().st_size for f in files))}
