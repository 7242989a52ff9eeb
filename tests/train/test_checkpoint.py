"""Checkpoints: everything needed to continue (weights, Adam moments, step, RNG, data position) round-trips
exactly, only a matching fingerprint resumes, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import shutil

import mlx.core as mx
from mlx.utils import tree_flatten

from toolsel.train.batches import BatchStream, Example
from toolsel.train.checkpoint import fingerprint, restore_checkpoint, save_checkpoint
from toolsel.train.lora import prepare_for_training, trainable_weights
from toolsel.train.loop import TrainArgs, TrainState, train
from toolsel.train.objective import diffusion_loss
from toolsel.train.optim import build_optimizer

FP_A, FP_B = "a" * 64, "b" * 64


def _examples(vocab: int, n: int = 6) -> list[Example]:
    keys = mx.random.split(mx.random.key(0), n)
    out = []
    for i, key in enumerate(keys):
        ids = mx.random.randint(3, vocab, (20 + 7 * i + 32,), key=key).tolist()
        out.append(Example(tuple([2] + ids[:20 + 7 * i]), tuple(ids[-32:])))
    return out


def _setup(load_tiny, path, steps=4):
    mx.random.seed(0)
    model = load_tiny(path)
    prepare_for_training(model, method="lora", rank=4, alpha=8)
    opt = build_optimizer(lr=5e-3, lr_min=5e-4, warmup_steps=1, total_steps=steps)
    return model, opt


def _equal_trees(a, b) -> bool:
    fa, fb = dict(tree_flatten(a)), dict(tree_flatten(b))
    return fa.keys() == fb.keys() and all(mx.array_equal(fa[k], fb[k]).item() for k in fa)


def test_round_trip_restores_weights_moments_and_state(tiny_model_dir, load_tiny, make_batch, tmp_path):
    model, opt = _setup(load_tiny, tiny_model_dir)
    data = [make_batch(model.config.text_config.vocab_size, seed=i) for i in range(2)]
    state = train(model, opt, diffusion_loss, iter(data), data[:1], TrainArgs(steps=2, val_every=1))
    save_checkpoint(tmp_path, model, opt, {**state.to_dict(), "fingerprint": FP_A})

    fresh, fresh_opt = _setup(load_tiny, tiny_model_dir)
    assert not _equal_trees(trainable_weights(fresh), trainable_weights(model))
    saved, message = restore_checkpoint(tmp_path, fresh, fresh_opt, FP_A)
    assert "resuming from step-000002" in message
    assert _equal_trees(trainable_weights(fresh), trainable_weights(model))
    assert _equal_trees(fresh_opt.state, opt.state)  # Adam m and v, step, learning rate
    assert fresh_opt.state["step"].item() == 2
    assert saved == {**state.to_dict(), "fingerprint": FP_A}


def test_only_a_matching_fingerprint_resumes(tiny_model_dir, load_tiny, tmp_path):
    model, opt = _setup(load_tiny, tiny_model_dir)
    opt.init(model.trainable_parameters())
    state = {**TrainState.fresh(0).to_dict(), "step": 3, "fingerprint": FP_A}
    save_checkpoint(tmp_path, model, opt, state)
    saved, message = restore_checkpoint(tmp_path, model, opt, FP_B)
    assert saved is None and "other train params, data or base" in message
    # A fresh run's first checkpoint removes the stale one, so it can never be picked up later.
    save_checkpoint(tmp_path, model, opt, {**state, "step": 1, "fingerprint": FP_B})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]


def test_keeps_the_newest_and_ignores_unfinished(tiny_model_dir, load_tiny, tmp_path):
    model, opt = _setup(load_tiny, tiny_model_dir)
    opt.init(model.trainable_parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model, opt, {**TrainState.fresh(0).to_dict(), "step": step, "fingerprint": FP_A})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000003"]
    (tmp_path / "step-000009").mkdir()  # killed before its state.json was written
    (tmp_path / ".step-000010.tmp").mkdir()
    saved, _ = restore_checkpoint(tmp_path, model, opt, FP_A)
    assert saved["step"] == 3


def test_fingerprint_covers_params_data_and_base(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n')
    base = fingerprint({"lr": 1e-3}, [data], {"config_sha256": "x"})
    assert fingerprint({"lr": 1e-3}, [data], {"config_sha256": "x"}) == base
    assert fingerprint({"lr": 3e-4}, [data], {"config_sha256": "x"}) != base
    assert fingerprint({"lr": 1e-3}, [data], {"config_sha256": "y"}) != base
    data.write_text('{"a": 2}\n')
    assert fingerprint({"lr": 1e-3}, [data], {"config_sha256": "x"}) != base


def test_resumed_run_is_bit_identical_in_process(tiny_model_dir, load_tiny, tmp_path):
    """4 updates straight vs 2 updates, checkpoint, fresh objects restored from it, 2 more (grad_accum 2, dropout
    on, a batch stream that crosses an epoch boundary)."""
    examples = _examples(256)
    args = TrainArgs(steps=4, grad_accum=2, save_every=2, val_every=2, seed=3)

    def run(stop_after=None, resume=False):
        model, opt = _setup(load_tiny, tiny_model_dir)
        for layer in model.model.decoder.layers:  # LoRA dropout draws from the global RNG
            layer.mlp.up_proj.dropout.p = 0.3
        state = None
        if resume:
            saved, _ = restore_checkpoint(tmp_path, model, opt, FP_A)
            state = TrainState(**{k: v for k, v in saved.items() if k != "fingerprint"})
        stream = BatchStream(examples, 2, 0, seed=1, bucket=32, position=state.position if state else None)
        run_args = TrainArgs(**{**args.__dict__, "steps": stop_after or args.steps})
        state = train(model, opt, diffusion_loss, stream, [], run_args, state=state,
                      on_checkpoint=lambda st: save_checkpoint(tmp_path, model, opt, {**st.to_dict(),
                                                                                      "fingerprint": FP_A}))
        return trainable_weights(model), state

    straight, straight_state = run()
    for p in tmp_path.iterdir():
        shutil.rmtree(p)
    run(stop_after=2)
    resumed, resumed_state = run(resume=True)
    assert resumed_state.history == straight_state.history
    assert resumed_state.position == straight_state.position and resumed_state.position["epoch"] >= 1
    assert all(mx.array_equal(straight[k], resumed[k]).item() for k in straight)
