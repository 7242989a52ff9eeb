"""The eval stage's computation: decode the test split with every model system, parse, run the baselines, score.

Model systems: `fused` (the deployable model), `base` (zero-shot) and `adapter` (base + adapter, a cross-check of the
fuse). Each is decoded by the batched sampler in `toolsel.eval.decode`; the texts go through the same parser, metrics
and report as the baselines (`toolsel.eval.parse/metrics/baselines/report`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import mlx.core as mx

from toolsel.eval import baselines, report
from toolsel.eval.decode import SamplerConfig, answer_text, decode, example_seed, stop_token_ids
from toolsel.eval.kernels import apply_kernels
from toolsel.eval.parse import check_outputs_sane, output_health

TRAINED_SYSTEMS = ("fused", "adapter")  # a broken decoder shows here first; the base may legitimately babble


@dataclass
class SystemDecode:
    """One model system's decoded test set: texts per seed (input order), steps per canvas, wall time."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_steps(self) -> float:
        return sum(self.steps) / max(len(self.steps), 1)

    @property
    def samples_per_second(self) -> float:
        return len(self.steps) / max(self.seconds, 1e-9)


def load_system(system: str, base_dir: Path, fused_dir: Path, adapter_dir: Path, kernels: str = "fast"):
    """(model, tokenizer) of a model system, with `kernels` installed (toolsel.eval.kernels)."""
    from toolsel.model.fuse import adapter_kind
    from toolsel.model.load import load_model

    if system == "fused":
        model, tokenizer = load_model(fused_dir)
    elif system == "base":
        model, tokenizer = load_model(base_dir)
    elif system == "adapter":
        full = adapter_kind(adapter_dir) == "full"
        model, tokenizer = load_model(adapter_dir) if full else load_model(base_dir, adapter_path=adapter_dir)
    else:
        raise ValueError(f"unknown model system {system!r}; expected fused, base or adapter")
    return apply_kernels(model, kernels), tokenizer


def decode_system(model, tokenizer, ids: Sequence[str], prompts: Sequence[str], cfg: SamplerConfig,
                  seeds: Sequence[int], *, batch_size: int, bucket: int,
                  on_batch: Callable[[int], None] | None = None) -> SystemDecode:
    """Decode every rendered prompt once per seed; example i of seed s draws from `example_seed(s, ids[i])`."""
    from toolsel.model.chat import encode_prompts

    prompt_ids = encode_prompts(tokenizer, list(prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(model, tokenizer)
    out = SystemDecode()
    tic = time.perf_counter()
    for seed in seeds:
        decoded = decode(model, prompt_ids, [example_seed(seed, i) for i in ids], cfg, pad_id=pad_id,
                         batch_size=batch_size, bucket=bucket, on_batch=on_batch)
        out.texts[seed] = [answer_text(tokenizer, d.tokens, stops)[0] for d in decoded]
        out.steps += [d.steps for d in decoded]
    out.seconds = time.perf_counter() - tic
    return out


def run_eval(test: Sequence[Mapping], test_tasks: Sequence[Mapping], train_tasks: Sequence[Mapping],
             candidates: Sequence[str], systems: Sequence[str], *, base_dir: Path, fused_dir: Path,
             adapter_dir: Path, cfg: SamplerConfig, seeds: Sequence[int], batch_size: int = 16, bucket: int = 32,
             kernels: str = "fast", floor_k: int = 3, retrieval_k: int = 5, vote_fraction: float = 0.5,
             bootstrap_samples: int = 1000, bootstrap_seed: int = 0, head_coverage: float = 0.8,
             max_bad_fraction: float = 0.5,
             progress: Callable[[str, int], Callable[[int], None]] | None = None,
             log: Callable[[str], None] = print) -> tuple[dict, dict[str, SystemDecode]]:
    """Score the model `systems` and the baselines on the rendered test split; returns (report result, decodes).

    `test` are rendered records (`id`, `prompt`, `tools`); `*_tasks` carry the raw task text for the baselines.
    Every seed decodes the whole test set and the metrics average over seeds, at temperature 0 too: a greedy
    denoiser still starts from, and renoises to, random canvases, and its answers depend on that draw. With a
    single seed the prediction records carry seed null.
    Raises `parse.OutputsInsaneError` when a trained system's outputs mostly name no candidate tool.
    """
    ids, prompts = [r["id"] for r in test], [r["prompt"] for r in test]
    run_seeds = list(seeds)
    single = len(run_seeds) == 1
    predictions: dict[str, list[dict]] = {}
    decodes: dict[str, SystemDecode] = {}
    for system in systems:
        model, tokenizer = load_system(system, base_dir, fused_dir, adapter_dir, kernels)
        on_batch = progress(system, len(ids) * len(run_seeds)) if progress else None
        decodes[system] = decoded = decode_system(model, tokenizer, ids, prompts, cfg, run_seeds,
                                                  batch_size=batch_size, bucket=bucket, on_batch=on_batch)
        del model
        gc.collect()
        mx.clear_cache()
        every_text = [t for seed in run_seeds for t in decoded.texts[seed]]
        health = output_health(every_text, candidates)
        log(f"{system}: {decoded.samples_per_second:.2f} samples/s, mean {decoded.mean_steps:.1f} denoising "
            f"steps per block; outputs {', '.join(f'{k} {v}' for k, v in health.items() if v)}; "
            f"first: {every_text[0][:80]!r}")
        if system in TRAINED_SYSTEMS:
            check_outputs_sane(every_text, candidates, max_bad_fraction=max_bad_fraction, system=system)
        predictions[system] = [p for seed in run_seeds
                               for p in report.predictions_from_texts(ids, decoded.texts[seed], candidates,
                                                                      None if single else seed)]
    predictions.update(baselines.run_baselines(train_tasks, test_tasks, candidates, k=floor_k,
                                               retrieval_k=retrieval_k, vote_fraction=vote_fraction))
    extra = {s: {"mean_steps_per_block": round(d.mean_steps, 4)} for s, d in decodes.items()}
    if "fused" in decodes and "adapter" in decodes:  # the fuse must not change what the model says
        same = [a == b for seed in run_seeds
                for a, b in zip(decodes["fused"].texts[seed], decodes["adapter"].texts[seed])]
        extra["fused"]["agreement_with_adapter"] = round(sum(same) / len(same), 6)
    result = report.score_systems(predictions, test_tasks, train_tasks, bootstrap_samples=bootstrap_samples,
                                  seed=bootstrap_seed, head_coverage=head_coverage, extra=extra)
    return result, decodes
