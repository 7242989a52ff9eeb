"""One fine-tuning run, start to finish: model, data, LoRA/full set-up, optimizer, resume, loop, saved adapter.

`fit` is the train stage's core: it reads no params file; the stage hands it `hp` = the `train:` section plus the
top-level `lr`. Everything it writes (adapter, checkpoints) is deterministic given `hp`, the data and the base.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable

import mlx.core as mx

from toolsel.io import read_jsonl
from toolsel.train.batches import BatchStream, encode_records, fixed_batches, special_id
from toolsel.train.checkpoint import fingerprint, restore_checkpoint, save_checkpoint
from toolsel.train.lora import prepare_for_training, save_trained, trainable_parameter_count
from toolsel.train.loop import TrainArgs, TrainState, train
from toolsel.train.optim import build_optimizer



def build_model(model_dir: str | os.PathLike, hp: dict):
    """(model prepared for training, tokenizer); the LoRA init is drawn from `hp["seed"]`."""
    from toolsel.model.chat import load_tokenizer
    from toolsel.model.load import load_model

    model, _ = load_model(model_dir)
    mx.random.seed(hp["seed"])
    lora = hp["lora"]
    prepare_for_training(model, method=hp["method"], rank=lora["rank"], alpha=lora["alpha"],
                         dropout=lora["dropout"], targets=lora["targets"])
    return model, load_tokenizer(model_dir)


def fit(data_dir: str | os.PathLike, model_dir: str | os.PathLike, out_dir: str | os.PathLike,
        ckpt_dir: str | os.PathLike, hp: dict, *, resume: bool = True,
        log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """Train on `data_dir/{train,valid}.jsonl` (rendered records); returns (metrics, per-step history)."""
    from toolsel.model.identity import model_identity
    from toolsel.train.objective import diffusion_loss

    data_dir = Path(data_dir)
    files = [data_dir / "train.jsonl", data_dir / "valid.jsonl"]
    model, tokenizer = build_model(model_dir, hp)
    canvas_length = model.config.canvas_length
    train_examples = encode_records(read_jsonl(files[0]), tokenizer, canvas_length)
    valid_examples = encode_records(read_jsonl(files[1]), tokenizer, canvas_length)
    pad_id = special_id(tokenizer, "<pad>")

    optimizer = build_optimizer(lr=hp["lr"], lr_min=hp["lr"] * hp["min_lr_ratio"], warmup_steps=hp["warmup_steps"],
                                total_steps=hp["steps"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
    identity = {k: v for k, v in model_identity(model_dir).items() if k != "path"}  # moving the dir is no change
    fp = fingerprint(hp, files, identity)
    saved, message = restore_checkpoint(ckpt_dir, model, optimizer, fp) if resume else (None, "resume disabled")
    log(message)
    state = TrainState(**{k: v for k, v in saved.items() if k != "fingerprint"}) if saved else None

    batches = BatchStream(train_examples, hp["batch_size"], pad_id, seed=hp["seed"], bucket=hp["prompt_bucket"],
                          position=state.position if state else None)
    val = fixed_batches(valid_examples, hp["batch_size"], pad_id, hp["prompt_bucket"]) if valid_examples else []
    args = TrainArgs(steps=hp["steps"], grad_accum=hp["grad_accum"], grad_clip=hp["grad_clip"],
                     val_every=hp["val_every"], save_every=hp["save_every"], seed=hp["seed"],
                     val_seed=hp["val_seed"], grad_checkpoint=hp["grad_checkpoint"], shards=hp["shards"])

    def on_checkpoint(st: TrainState) -> None:
        save_checkpoint(ckpt_dir, model, optimizer, {**st.to_dict(), "fingerprint": fp})

    resumed_from = state.step if state else None
    loss_fn = partial(diffusion_loss, **hp["objective"])
    final = train(model, optimizer, loss_fn, batches, val, args, state=state, on_checkpoint=on_checkpoint)
    save_trained(model, out_dir, model_dir)

    last = final.history[-1] if final.history else {}
    metrics = {
        "method": hp["method"],
        "steps": final.step,
        "resumed_from_step": resumed_from,
        "trainable_params": trainable_parameter_count(model),
        "train_examples": len(train_examples),
        "valid_examples": len(valid_examples),
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "best_val_loss": final.best_val_loss,
        "best_step": final.best_step,
        "tokens": final.tokens,
        "tokens_per_sec": final.tokens / final.train_seconds if final.train_seconds else None,
        "peak_memory_gb": max(final.peak_memory_gb, mx.get_peak_memory() / 1e9),
    }
    return metrics, final.history
