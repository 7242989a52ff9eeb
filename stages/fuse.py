"""Merge the trained adapter into the base and write a deployable model directory (models/fused).

LoRA is merged layer by layer with mlx-vlm's own `LoRALinear.fuse`; a quantized base is re-quantized with each
layer's own bits (the mlx-community mixed 8/4-bit rule survives) unless `fuse.dequantize` is set; a full fine-tune
is written in the base's format. The result loads with plain `mlx_vlm.load(dir)` and runs `mlx_vlm.generate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.io import sha256_file, write_json
from toolsel.params import DEFAULT_PARAMS, load_params
from toolsel.progress import summary
from toolsel.schemas import SchemaError

STAGE_VERSION = "1"
MANIFEST = "toolsel_fuse.json"


def fuse(
    base: Annotated[Path, typer.Option(help="Base stage output: the tiny model directory or a real model's "
                                            "identity record.")] = Path("models/base"),
    adapter: Annotated[Path, typer.Option(help="Train stage output: adapters.safetensors + adapter_config.json, "
                                               "or a full fine-tune's model directory.")] = Path("models/adapter"),
    output: Annotated[Path, typer.Option(help="Fused model directory (replaced).")] = Path("models/fused"),
    dequantize: Annotated[Optional[bool], typer.Option(
        "--dequantize/--keep-quantization",
        help="Write float weights even when the base is quantized [params: fuse.dequantize].")] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = DEFAULT_PARAMS,
) -> None:
    from toolsel.model.identity import resolve_model_dir
    from toolsel.model.fuse import ADAPTER_CONFIG, adapter_kind, fuse_model
    from toolsel.model.load import ModelDirError, validate_model_dir

    try:
        if dequantize is None:
            dequantize = load_params(params)["fuse"]["dequantize"]
        base_dir = resolve_model_dir(base)
        validate_model_dir(base_dir)
        kind = adapter_kind(adapter)
        if kind == "full":
            validate_model_dir(adapter)
        elif not (adapter / "adapters.safetensors").is_file():
            raise FileNotFoundError(f"{adapter / 'adapters.safetensors'}: missing (run `toolsel train` first)")
        result = fuse_model(base_dir, adapter, output, dequantize=dequantize)
    except (SchemaError, ModelDirError, FileNotFoundError, ValueError, KeyError) as err:
        typer.echo(f"fuse: {err}", err=True)
        raise typer.Exit(1)

    weights = "model.safetensors" if kind == "full" else "adapters.safetensors"
    write_json(output / MANIFEST, {
        "stage": "fuse", "stage_version": STAGE_VERSION, "dequantize": dequantize,
        "adapter": {"kind": kind, "config_sha256": sha256_file(adapter / ADAPTER_CONFIG),
                    "weights_sha256": sha256_file(adapter / weights)},
        "base_config_sha256": sha256_file(base_dir / "config.json"),
        "merged_layers": result["merged_layers"], "quantized": result["quantized"],
        "weights": {name: sha256_file(output / name) for name in result["weight_files"]},
    })
    form = "quantized as the base" if result["quantized"] else "float"
    summary("fuse", f"{kind}: {result['merged_layers']} layers merged, {result['parameters']:,} weights {form}, "
                    f"{result['bytes'] / 2**20:.1f} MiB -> {output}")
