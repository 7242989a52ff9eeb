"""Fusing: the fused directory loads with plain `mlx_vlm.load` and runs `mlx_vlm.generate`, its logits equal
base + adapter (float and quantized, stated tolerances), the mixed 8/4-bit rule survives, bytes are deterministic."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from typer.testing import CliRunner

from toolsel.io import sha256_file
from toolsel.model.fuse import fuse_model
from testkit import padded_tokenizer

# Max |logit difference|, measured on the tiny models below, with margin:
FLOAT_TOL = 1e-4  # W + s B^T A^T vs W x + s (x A) B: float rounding only (measured ~1e-6)
# Quantized: the merged 8-bit layers are re-quantized, one more rounding of every weight (affine re-quantization is
# not even idempotent: a zero adapter alone moves the logits by 0.06 on this random model). Measured 0.06-0.15,
# against 0.55 for the base's own float -> 4-bit conversion.
REQUANT_TOL = 0.25


def make_adapter(base_dir, out_dir, *, method="lora", seed=0):
    """A saved adapter whose weights matter: LoRA B is zero at init, so give it random values (full: perturb all)."""
    from toolsel.model.load import load_model
    from toolsel.train.lora import prepare_for_training, save_trained

    model, _ = load_model(base_dir)
    mx.random.seed(seed)
    prepare_for_training(model, method=method, rank=4, alpha=8.0)
    trainable = tree_flatten(model.trainable_parameters())
    if method == "lora":
        update = [(k, 0.05 * mx.random.normal(v.shape)) for k, v in trainable if k.endswith("lora_b")]
    else:
        update = [(k, v + 0.02 * mx.random.normal(v.shape)) for k, v in trainable if v.ndim > 1]
    model.update(tree_unflatten(update))
    save_trained(model, out_dir, base_dir)
    return out_dir


def logits(model):
    """Decoder logits for a fixed prompt (longer than the sliding window) and canvas."""
    prompt = (mx.arange(40)[None, :] * 7 + 11) % 500
    canvas = (mx.arange(32)[None, :] * 13 + 5) % 500
    cache = model.diffusion_prefill_cache(prompt, attention_mask=None, cache=model.make_cache(), pixel_values=None,
                                          mm_token_type_ids=None, prefill_step_size=None, chunk_prefill=False)
    out = model.diffusion_decoder_logits(canvas, cache=cache)
    mx.eval(out)
    return out


def max_diff(a, b) -> float:
    return mx.max(mx.abs(a - b)).item()


@pytest.fixture(scope="module")
def bases(tmp_path_factory, model_tokenizer_dir):
    from toolsel.model.tiny import build_tiny, quantize_tiny, tiny_config

    root = tmp_path_factory.mktemp("fuse")
    tokenizer = padded_tokenizer(model_tokenizer_dir, root / "tokenizer")
    float_dir = build_tiny(root / "float", tokenizer, tiny_config(vocab_size=64), seed=0)
    # Quantized case: every expert active, because on random weights one rounding step can flip a top-2 expert
    # choice and move a logit discontinuously; the tolerance above is about rounding, not routing.
    dense = build_tiny(root / "dense", tokenizer, tiny_config(vocab_size=64, top_k_experts=8), seed=0)
    return {"float": float_dir, "quantized": quantize_tiny(dense, root / "quantized"), "dense_float": dense}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, bases):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(base, root / name) for name, base in bases.items()}


def stock_load_and_generate(model_dir):
    """Exactly what a user runs: mlx-vlm's own loader and generate, default sampler."""
    import mlx_vlm

    model, processor = mlx_vlm.load(str(model_dir))
    result = mlx_vlm.generate(model, processor, "List the tools.", max_tokens=model.config.canvas_length,
                              max_denoising_steps=4, seed=0)
    assert isinstance(result.text, str) and result.generation_tokens > 0
    return model


def test_float_fuse_loads_in_stock_mlx_vlm_and_matches_base_plus_adapter(tmp_path, bases, adapters):
    import mlx_vlm

    summary = fuse_model(bases["float"], adapters["float"], tmp_path / "fused")
    assert summary["merged_layers"] == 6 * 7 - 1 and not summary["quantized"]  # the full-attention layer has no v_proj
    names = {p.name for p in (tmp_path / "fused").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json"} <= names
    fused = stock_load_and_generate(tmp_path / "fused")
    reference, _ = mlx_vlm.load(str(bases["float"]), adapter_path=str(adapters["float"]))
    base, _ = mlx_vlm.load(str(bases["float"]))
    assert max_diff(logits(fused), logits(reference)) < FLOAT_TOL
    assert max_diff(logits(fused), logits(base)) > 100 * FLOAT_TOL  # the adapter really is in there
    assert not any("lora" in k for k, _ in tree_flatten(fused.parameters()))


def test_quantized_fuse_keeps_the_mixed_rule_and_matches_within_requantization(tmp_path, bases, adapters):
    import mlx_vlm
    from mlx_vlm.models.switch_layers import QuantizedSwitchLinear

    summary = fuse_model(bases["quantized"], adapters["quantized"], tmp_path / "fused")
    assert summary["quantized"]
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert config["quantization"] == json.loads((bases["quantized"] / "config.json").read_text())["quantization"]
    fused = stock_load_and_generate(tmp_path / "fused")
    layer = fused.model.decoder.layers[0]
    bits = {"q_proj": layer.self_attn.q_proj.bits, "down_proj": layer.mlp.down_proj.bits,
            "router": layer.router.proj.bits, "embed": fused.model.decoder.embed_tokens.bits,
            "experts": layer.experts.gate_up_proj.bits,
            "self_conditioning": fused.model.decoder.self_conditioning.up_proj.bits}
    assert bits == {"q_proj": 8, "down_proj": 8, "router": 8, "embed": 8, "experts": 4, "self_conditioning": 4}
    assert isinstance(layer.experts.gate_up_proj, QuantizedSwitchLinear)
    reference, _ = mlx_vlm.load(str(bases["quantized"]), adapter_path=str(adapters["quantized"]))
    base, _ = mlx_vlm.load(str(bases["quantized"]))
    float_base, _ = mlx_vlm.load(str(bases["dense_float"]))
    diff = max_diff(logits(fused), logits(reference))
    assert diff < REQUANT_TOL and diff < 0.5 * max_diff(logits(base), logits(float_base))
    assert max_diff(logits(fused), logits(base)) > 3 * diff  # the adapter really is in there

    # Weights: a merged layer is the base + s B^T A^T up to one quantization step (MLX's affine rounding error reaches
    # ~0.98 step on its own); untouched layers (experts, router) are bit-equal to the base.
    adapter = mx.load(str(adapters["quantized"] / "adapters.safetensors"))
    scale = json.loads((adapters["quantized"] / "adapter_config.json").read_text())["lora_parameters"]["scale"]
    name = "model.decoder.layers.0.self_attn.q_proj"
    merged, original = fused.model.decoder.layers[0].self_attn.q_proj, base.model.decoder.layers[0].self_attn.q_proj
    delta = scale * (adapter[f"{name}.lora_b"].T @ adapter[f"{name}.lora_a"].T)
    expected = dequantize(original) + delta
    step = mx.abs(mx.repeat(merged.scales, merged.group_size, axis=-1))  # affine scales may be negative
    assert mx.all(mx.abs(dequantize(merged) - expected) <= step).item()
    for untouched in ("experts.gate_up_proj", "router.proj"):
        a, b = (dict(tree_flatten(m.model.decoder.layers[0].parameters())) for m in (fused, base))
        assert all(mx.array_equal(a[k], b[k]) for k in a if k.startswith(untouched))


def dequantize(layer):
    return mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=layer.group_size, bits=layer.bits)


def test_dequantized_fuse_is_float_and_matches_exactly(tmp_path, bases, adapters):
    import mlx_vlm

    fuse_model(bases["quantized"], adapters["quantized"], tmp_path / "fused", dequantize=True)
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    fused = stock_load_and_generate(tmp_path / "fused")
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in fused.named_modules())
    reference, _ = mlx_vlm.load(str(bases["quantized"]), adapter_path=str(adapters["quantized"]))
    assert max_diff(logits(fused), logits(reference)) < FLOAT_TOL


def test_full_fine_tune_is_written_as_the_trained_weights(tmp_path, bases):
    import mlx_vlm

    trained = make_adapter(bases["float"], tmp_path / "full", method="full")
    summary = fuse_model(bases["float"], trained, tmp_path / "fused")
    assert summary["kind"] == "full" and summary["merged_layers"] == 0
    fused = stock_load_and_generate(tmp_path / "fused")
    reference, _ = mlx_vlm.load(str(trained))
    assert max_diff(logits(fused), logits(reference)) == 0.0


def test_fuse_is_byte_deterministic(tmp_path, bases, adapters):
    for run in ("a", "b"):
        fuse_model(bases["quantized"], adapters["quantized"], tmp_path / run)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert all(sha256_file(tmp_path / "a" / f) == sha256_file(tmp_path / "b" / f) for f in files)


def test_fuse_stage_command(tmp_path, bases, adapters):
    from toolsel.cli import app

    out = tmp_path / "fused"
    args = ["fuse", "--base", str(bases["float"]), "--adapter", str(adapters["float"]), "--output", str(out),
            "--keep-quantization", "--params", str(tmp_path / "none.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[fuse] lora: 41 layers merged" in result.output
    manifest = json.loads((out / "toolsel_fuse.json").read_text())
    assert manifest["stage_version"] == "1" and manifest["adapter"]["kind"] == "lora"
    missing = CliRunner().invoke(app, [*args[:3], "--adapter", str(tmp_path / "nope"), *args[5:]])
    assert missing.exit_code == 1 and "adapter_config.json" in missing.output


def test_quantize_like_reproduces_the_base_layout(bases):
    """A full fine-tune of a quantized base is re-quantized by the base's config block: same layers, same bits."""
    import mlx_vlm

    from toolsel.model.fuse import quantize_like

    quantized, _ = mlx_vlm.load(str(bases["quantized"]))
    model, _ = mlx_vlm.load(str(bases["dense_float"]))
    quantize_like(model, json.loads((bases["quantized"] / "config.json").read_text())["quantization"])

    def layout(m):
        return {name: (type(mod).__name__, getattr(mod, "bits", None), getattr(mod, "group_size", None))
                for name, mod in m.named_modules() if hasattr(mod, "weight") or hasattr(mod, "scales")}

    assert layout(model) == layout(quantized)
    assert {bits for _, bits, _ in layout(model).values()} - {None} == {4, 8}


def test_fuse_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path, bases, adapters):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        fuse_model(bases["float"], adapters["float"], tmp_path / "precious")
    with pytest.raises(ValueError, match="own base"):
        fuse_model(bases["float"], adapters["float"], bases["float"])
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
