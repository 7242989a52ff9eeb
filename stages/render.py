"""Render each split into DiffusionGemma {prompt, response} pairs with the model directory's own tokenizer.

Prompt = the chat template (system instruction, the task plus the train split's candidate tool list, thinking
off) without the leading <bos>; response = "- Tool" lines ending <turn|>. Responses longer than the model's
canvas are quarantined; prompts over render.max_prompt_tokens are truncated or quarantined (render.overflow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from toolsel.data.records import SPLITS, gc_paused, read_validated
from toolsel.data.render import OVERFLOW_POLICIES, PromptTooLong, candidate_tools, render_split
from toolsel.io import sha256_file, write_json, write_jsonl
from toolsel.model.chat import load_tokenizer, read_canvas_length
from toolsel.params import DEFAULT_PARAMS, load_params
from toolsel.progress import summary
from toolsel.schemas import SchemaError, validate

STAGE_VERSION = "1"
TINY_MODEL_DIR = Path("models/base")  # where the base stage builds the embedded tiny model


def model_dir_for(model_path: str) -> Path:
    """`model.path: tiny` means the base stage's output; anything else is a local model directory."""
    return TINY_MODEL_DIR if model_path == "tiny" else Path(model_path).expanduser()


@gc_paused()
def render(
    input_dir: Annotated[Path, typer.Option(help="Directory with train/valid/test.jsonl (schema `example`).")] = Path(
        "data/split"),
    output_dir: Annotated[Path, typer.Option(help="Writes train/valid/test.jsonl, candidates.json, "
                                                  "quarantine.jsonl and manifest.json here.")] = Path("data/rendered"),
    metrics: Annotated[Path, typer.Option(help="Render counts (JSON).")] = Path("metrics/render.json"),
    model_dir: Annotated[Optional[Path], typer.Option(
        help="Model directory with tokenizer, chat template and config.json canvas_length "
             "[params: model.path; `tiny` = models/base].")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(help="[params: render.system_prompt]")] = None,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="[params: render.max_prompt_tokens]")] = None,
    overflow: Annotated[Optional[str], typer.Option(
        help=f"Prompts over the limit: {' | '.join(OVERFLOW_POLICIES)} [params: render.overflow].")] = None,
    max_candidates: Annotated[Optional[int], typer.Option(
        help="Most frequent train tools listed in the prompt [params: render.max_candidates].")] = None,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = DEFAULT_PARAMS,
) -> None:
    try:
        options = (model_dir, system_prompt, max_prompt_tokens, overflow, max_candidates)
        every = load_params(params) if None in options or params.exists() else {"render": {}, "model": {}}
        conf = every["render"]
        model_dir = model_dir or model_dir_for(every["model"]["path"])
        system_prompt = system_prompt if system_prompt is not None else conf["system_prompt"]
        max_prompt_tokens = max_prompt_tokens or conf["max_prompt_tokens"]
        overflow = overflow or conf["overflow"]
        max_candidates = max_candidates or conf["max_candidates"]
        tokenizer = load_tokenizer(model_dir)
        canvas = read_canvas_length(model_dir)
        splits = {name: read_validated(input_dir / f"{name}.jsonl", "example", desc=f"render: read {name}")
                  for name in SPLITS}
        ranked = candidate_tools(splits["train"])
        candidates = [tool for tool, _ in ranked[:max_candidates]]
        results = {name: render_split(records, tokenizer, system_prompt=system_prompt, candidates=candidates,
                                      canvas_length=canvas, max_prompt_tokens=max_prompt_tokens,
                                      overflow=overflow, split=name)
                   for name, records in splits.items()}
    except (SchemaError, PromptTooLong, ValueError, OSError) as err:
        typer.echo(f"render: {err}", err=True)
        raise typer.Exit(1)

    quarantine = [q for name in SPLITS for q in results[name][1]]
    for count, record in enumerate(quarantine, 1):
        validate(record, "render_quarantine", f"quarantine record {count}")
    for name in SPLITS:
        write_jsonl(output_dir / f"{name}.jsonl", results[name][0])
    write_jsonl(output_dir / "quarantine.jsonl", quarantine)
    listing = {"tools": [t for t, _ in ranked], "counts": dict(ranked), "in_prompt": len(candidates),
               "source": "train"}
    validate(listing, "candidates", "candidates.json")
    write_json(output_dir / "candidates.json", listing)
    counts = {"canvas_length": canvas, "max_prompt_tokens": max_prompt_tokens, "overflow": overflow,
              "candidates": len(ranked), "candidates_in_prompt": len(candidates),
              "splits": {name: results[name][2] for name in SPLITS}}
    manifest = {
        "stage": "render", "stage_version": STAGE_VERSION,
        "params": {"system_prompt": system_prompt, "max_prompt_tokens": max_prompt_tokens, "overflow": overflow,
                   "max_candidates": max_candidates},
        "model": {"path": str(model_dir), "canvas_length": canvas,
                  "tokenizer_sha256": sha256_file(Path(model_dir) / "tokenizer.json")},
        "inputs": {name: sha256_file(input_dir / f"{name}.jsonl") for name in SPLITS},
        "outputs": {name: sha256_file(output_dir / f"{name}.jsonl") for name in SPLITS},
        "quarantined": len(quarantine),
    }
    validate(counts, "render_metrics", str(metrics))
    validate(manifest, "render_manifest", "render manifest")
    write_json(output_dir / "manifest.json", manifest)
    write_json(metrics, counts)
    per_split = counts["splits"]
    summary("render", " / ".join(f"{name} {per_split[name]['rendered']}" for name in SPLITS)
            + f" examples; {sum(s['truncated'] for s in per_split.values())} truncated, {len(quarantine)} "
              f"quarantined; {len(candidates)} candidate tools; canvas {canvas} -> {output_dir}")
