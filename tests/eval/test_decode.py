"""The batched sampler: prompt-by-prompt equality with mlx-vlm's stock generate, the two published sampler bugs,
per-example independence inside a batch, and the pieces (schedule, acceptance rules, RNG streams, bucketing)."""

from __future__ import annotations

import json
import random
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch

from testkit import padded_tokenizer
from toolsel.eval import decode as D

STEPS = 10


def make_converging(src, out_dir, stop_entropy):
    """A copy whose decoder mostly copies its input (damped layer outputs, per-token embedding scales): canvases
    settle after a varying number of steps, so early stopping fires at different steps per example."""
    shutil.copytree(src, out_dir)
    weights = mx.load(str(out_dir / "model.safetensors"))
    embed = "model.decoder.embed_tokens.weight"
    weights[embed] = weights[embed] * mx.random.uniform(1, 40, (weights[embed].shape[0], 1), key=mx.random.key(5))
    for name in weights:
        if name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
            weights[name] = weights[name] * 0.05
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "pt"})
    generation = json.loads((out_dir / "generation_config.json").read_text())
    generation["confidence_threshold"] = stop_entropy  # the stock path reads its stopping rule from here
    (out_dir / "generation_config.json").write_text(json.dumps(generation))
    return out_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, model_tokenizer_dir):
    from toolsel.model.tiny import build_tiny, quantize_tiny, tiny_config

    root = tmp_path_factory.mktemp("decode")
    tokenizer = padded_tokenizer(model_tokenizer_dir, root / "tokenizer")
    plain = build_tiny(root / "plain", tokenizer, tiny_config(vocab_size=64), seed=0)
    converging = make_converging(plain, root / "converging", 0.3)
    quantized = quantize_tiny(converging, root / "quantized")
    shutil.copy(converging / "generation_config.json", quantized / "generation_config.json")
    return {"plain": plain, "converging": converging, "quantized": quantized}


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)  # lengths 4..70: several buckets, padding inside each, some past the sliding window (32)
    return [[2] + [rng.randrange(11, 500) for _ in range(n)] for n in (3, 69, 40, 17, 55, 30)]


@pytest.fixture(scope="module")
def same_length_groups():
    """Prompts that come in groups of equal length: with bucket 1 every batch holds one length, no padding."""
    rng = random.Random(1)
    return [[2] + [rng.randrange(11, 500) for _ in range(n)] for n in (3, 3, 40, 40, 40, 69)]


def stock_generate(model, processor, prompt, seed, *, sampler, temperature):
    """mlx-vlm's own generate path (stream_generate is what generate loops over): tokens, text, steps."""
    import mlx_vlm

    tokens, text, last = [], "", None
    for result in mlx_vlm.stream_generate(
            model, processor, "", input_ids=mx.array([prompt]), max_tokens=model.config.canvas_length,
            temperature=temperature, diffusion_full_canvas=True, max_denoising_steps=STEPS, seed=seed,
            diffusion_sampler="confidence-threshold" if sampler == "confidence" else sampler):
        if not result.is_draft and not result.diffusion_block_complete and result.finish_reason is None:
            tokens.append(result.token)
        text += result.text
        last = result
    return tokens, text, last.diffusion_denoising_steps, last.finish_reason


def check_against_stock(model_dir, prompts, *, sampler, temperature=0.0, stop_entropy=0.005, bucket=32,
                        kernels="exact", batch_size=4):
    import mlx_vlm

    from toolsel.eval.kernels import apply_kernels
    from toolsel.model.load import load_model

    ours, tokenizer = load_model(model_dir)  # our loader (router patch) vs the unpatched stock model below
    apply_kernels(ours, kernels)
    cfg = D.SamplerConfig(sampler=sampler, steps=STEPS, temperature=temperature, stop_entropy=stop_entropy)
    seeds = [1000 + i for i in range(len(prompts))]
    decoded = D.decode(ours, prompts, seeds, cfg, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                       bucket=bucket)
    stops = D.stop_token_ids(ours, tokenizer)
    stock, processor = mlx_vlm.load(str(model_dir))
    steps = []
    for prompt, seed, got in zip(prompts, seeds, decoded):
        tokens, text, stock_steps, finish = stock_generate(stock, processor, prompt, seed, sampler=sampler,
                                                           temperature=temperature)
        text_ours, stopped = D.answer_text(tokenizer, got.tokens, stops)
        # stock streams the canvas up to its first stop id: compare that prefix (and the stop) token for token
        assert got.tokens[:len(tokens)] == tokens, f"prompt of {len(prompt)} tokens differs from stock generate"
        assert stopped == (finish == "stop") and (stopped or len(tokens) == len(got.tokens))
        assert got.steps == stock_steps
        # random weights emit stray bytes: the streaming detokenizer drops an incomplete UTF-8 sequence, a full
        # decode shows U+FFFD; every other character must agree
        assert text_ours.replace("\ufffd", "") == text.replace("\ufffd", "")
        steps.append(got.steps)
    return steps


# Exactness. A batch without padding runs the very ops of a single unpadded prompt, so it is bit-identical to stock
# generate whatever the weights. Left padding changes the fp32 reduction order (logits move by ~1e-5, see
# test_left_padding_moves_logits_by_rounding_only): on random weights, whose token entropies sit in near ties, that can
# flip an acceptance decision, so padded batches are compared on the converging model, whose decisions have margins.
@pytest.mark.parametrize("sampler", ["entropy-bound", "confidence"])
def test_greedy_batch_equals_stock_generate_prompt_by_prompt(dirs, same_length_groups, sampler):
    steps = check_against_stock(dirs["plain"], same_length_groups, sampler=sampler, bucket=1)
    assert steps == [STEPS] * len(same_length_groups)  # random weights never settle: every step runs


def test_sampled_batch_equals_stock_generate(dirs, same_length_groups):
    check_against_stock(dirs["plain"], same_length_groups, sampler="entropy-bound", temperature=1.0, bucket=1)


@pytest.mark.parametrize("sampler", ["entropy-bound", "confidence"])
def test_padded_buckets_with_early_stop_equal_stock_generate(dirs, prompts, sampler):
    steps = check_against_stock(dirs["converging"], prompts, sampler=sampler, stop_entropy=0.3, bucket=32)
    assert len(set(steps)) > 1 and max(steps) < STEPS  # stops fire, at different steps per example


def one_bucket(prompts, length=30):
    """The prompts cut or padded (with a real token) to one length: no padding differences, bit-exact."""
    return [p[:length] + [7] * (length - len(p[:length])) for p in prompts]


# Continuous batching: with 2 slots for 6 prompts, rows that stop early are replaced by the queue's next prompt at
# its own first step (no self-conditioning, no history) beside rows mid-way: each must still decode what stock
# generate decodes alone, step counts included.
@pytest.mark.parametrize("sampler", ["entropy-bound", "confidence"])
def test_rows_joining_a_running_batch_decode_what_stock_generate_decodes(dirs, prompts, sampler):
    steps = check_against_stock(dirs["converging"], one_bucket(prompts), sampler=sampler, stop_entropy=0.3,
                                bucket=1, batch_size=2)
    assert len(set(steps)) > 1 and max(steps) < STEPS  # rows leave at different steps: later ones join mid-way
    padded = check_against_stock(dirs["converging"], prompts + prompts[::-1], sampler=sampler, stop_entropy=0.3,
                                 bucket=32, batch_size=2)
    assert len(set(padded)) > 1


def test_quantized_embedding_rows_join_exactly(dirs, prompts):
    """A quantized embedding: mlx-vlm self-conditions from the logits itself; we pass the same embeddings (so a
    first-step row can sit beside others), bit for bit."""
    steps = check_against_stock(dirs["quantized"], one_bucket(prompts), sampler="entropy-bound",
                                stop_entropy=0.3, bucket=1, batch_size=2)
    assert len(set(steps)) > 1


@pytest.mark.parametrize("kind", ["plain", "quantized"])
def test_a_joining_row_computes_what_it_computes_alone(dirs, prompts, kind):
    """Bit for bit, on the decoder's logits: a row at its first step beside rows that self-condition gets the
    decoder's 'none' (float and quantized embedding), and a quantized embedding's signal passed as embeddings is the
    one mlx-vlm computes from the logits."""
    from toolsel.model.load import load_model

    model, _ = load_model(dirs[kind])
    rows = one_bucket(prompts)[:3]
    canvas = mx.array([[(i * 37 + r) % 60 for i in range(model.config.canvas_length)] for r in range(3)])
    vocab = model.config.text_config.vocab_size
    processed = mx.random.normal((2, model.config.canvas_length, vocab), key=mx.random.key(3)) * 4
    both = D.prefill(model, rows[:2], pad_id=0).extend(D.prefill(model, rows[2:], pad_id=0))
    signal = mx.concatenate([both.self_conditioning(processed), both.blank_self_conditioning(1)])
    mixed = both.logits(canvas, signal)
    alone = D.prefill(model, rows[2:], pad_id=0).logits(canvas[2:], None)
    assert mx.array_equal(mixed[2:], alone)
    stock = model.diffusion_decoder_logits(canvas[:2], cache=D.prefill(model, rows[:2], pad_id=0).cache,
                                           self_conditioning=model.diffusion_self_conditioning(
                                               processed, model.diffusion_prepare_self_conditioning()))
    assert mx.array_equal(mixed[:2], stock)
    assert not mx.array_equal(mixed[:2], both.select(mx.array([0, 1])).logits(canvas[:2], None))


@pytest.mark.parametrize("sampler", ["entropy-bound", "confidence"])
def test_fast_kernels_decode_what_stock_generate_decodes(dirs, prompts, sampler):
    """eval.kernels: fast moves the logits by rounding only (tests/test_fastmath.py): on a model whose decisions have
    margins, every answer and step count equals stock generate's (which runs mlx-vlm's kernels: the patch is per
    model instance)."""
    steps = check_against_stock(dirs["converging"], prompts, sampler=sampler, stop_entropy=0.3, bucket=32,
                                kernels="fast")
    assert len(set(steps)) > 1 and max(steps) < STEPS


def test_fast_kernels_leave_other_models_alone(dirs, prompts):
    from toolsel.eval.kernels import use_fast_eval_kernels, uses_fast_eval_kernels
    from toolsel.model.load import load_model

    def logits(model):
        cache = model.diffusion_prefill_cache(mx.array([prompts[1]]), attention_mask=None, cache=model.make_cache(),
                                              pixel_values=None, mm_token_type_ids=None, prefill_step_size=None,
                                              chunk_prefill=False)
        canvas = mx.array([[5] * model.config.canvas_length])
        return D.ModelDenoiser(model, cache, {}).logits(canvas, None)

    plain, _ = load_model(dirs["plain"])
    before = logits(plain)
    fast, _ = load_model(dirs["plain"])
    assert use_fast_eval_kernels(fast) and uses_fast_eval_kernels(fast) and not uses_fast_eval_kernels(plain)
    moved = mx.abs(logits(fast) - before).max().item()
    assert 0 < moved < 1e-4  # a different computation of the same function
    assert mx.array_equal(logits(plain), before)  # bit for bit: the other instance keeps mlx-vlm's kernels


def test_left_padding_moves_logits_by_rounding_only(dirs, prompts):
    from toolsel.model.load import load_model

    model, _ = load_model(dirs["plain"])
    canvas = mx.array([[(i * 37) % 500 for i in range(32)]])

    def first_logits(prompt, length):
        ids, mask = D.left_pad([prompt], length, pad_id=0)
        cache = model.diffusion_prefill_cache(ids, attention_mask=mask, cache=model.make_cache(), pixel_values=None,
                                              mm_token_type_ids=None, prefill_step_size=None, chunk_prefill=False)
        full = None if mask is None else mx.concatenate([mask, mx.ones((1, 32), dtype=mx.bool_)], axis=-1)
        masks = model.diffusion_decoder_masks(canvas, cache, full)
        return D.ModelDenoiser(model, cache, masks).logits(canvas, None)

    for prompt in prompts:
        padded = first_logits(prompt, D.bucket_length(len(prompt), 32) + 32)
        assert mx.max(mx.abs(padded - first_logits(prompt, len(prompt)))).item() < 1e-4


def test_early_stop_of_one_example_does_not_change_the_others(dirs, prompts):
    from toolsel.model.load import load_model

    model, tokenizer = load_model(dirs["converging"])
    cfg = D.SamplerConfig(steps=STEPS, stop_entropy=0.3)
    same_length = one_bucket(prompts)
    seeds = list(range(len(same_length)))
    together = D.decode(model, same_length, seeds, cfg, pad_id=0, batch_size=len(same_length))
    alone = [D.decode(model, [p], [s], cfg, pad_id=0)[0] for p, s in zip(same_length, seeds)]
    assert together == alone
    assert len({d.steps for d in together}) > 1
    shuffled = D.decode(model, same_length[::-1], seeds[::-1], cfg, pad_id=0, batch_size=3)
    assert shuffled[::-1] == together


def test_concurrent_lanes_decode_exactly_what_one_lane_does(dirs, prompts):
    from toolsel.model.load import load_model

    model, _ = load_model(dirs["converging"])
    cfg = D.SamplerConfig(steps=STEPS, stop_entropy=0.3)
    seeds = list(range(len(prompts)))
    one = D.decode(model, prompts, seeds, cfg, pad_id=0, batch_size=2, lanes=1)
    assert D.decode(model, prompts, seeds, cfg, pad_id=0, batch_size=2, lanes=3) == one
    from toolsel.eval.kernels import use_fast_eval_kernels

    use_fast_eval_kernels(model)  # the fast path's one-pass sampler softmax is per row too
    fast_one = D.decode(model, prompts, seeds, cfg, pad_id=0, batch_size=2, lanes=1)
    assert D.decode(model, prompts, seeds, cfg, pad_id=0, batch_size=2, lanes=3) == fast_one
    assert len({d.steps for d in one}) > 1  # lanes that stop at different steps


class ScriptedDenoiser:
    """Fixed raw logits every step; records what the sampler feeds back in."""

    def __init__(self, logits):
        self.raw, self.canvases, self.self_conditioning_inputs, self.fed_back = logits, [], [], []

    def logits(self, canvas, self_conditioning):
        self.canvases.append(np.array(canvas))
        self.fed_back.append(self_conditioning)
        return self.raw

    def self_conditioning(self, processed):
        self.self_conditioning_inputs.append(processed)
        return processed * 1.0

    def select(self, rows):
        return self


def flat_logits(batch=2, length=8, vocab=50, bump=1.0):
    """Near-uniform logits (high entropy, so almost nothing is accepted) with a small bump on a known token."""
    target = (np.arange(length)[None, :] * 7 + np.arange(batch)[:, None] * 3) % vocab
    logits = np.zeros((batch, length, vocab), dtype=np.float32)
    np.put_along_axis(logits, target[..., None], bump, axis=-1)
    return mx.array(logits), target


def test_answer_is_final_argmax_not_renoised_canvas():
    logits, target = flat_logits()
    denoiser = ScriptedDenoiser(logits)
    cfg = D.SamplerConfig(steps=6, stop_entropy=0.0)
    answer, steps = D.denoise(denoiser, D.KeyStreams([1, 2]), cfg, canvas_length=8, vocab_size=50)
    assert (answer == target).all()
    assert list(steps) == [6, 6]
    # the canvas the sampler carried into the last step is mostly random renoise: returning it would be the bug
    assert (denoiser.canvases[-1] != target).mean() > 0.5


def test_early_stopped_answer_is_argmax_not_renoised_canvas():
    logits, target = flat_logits()
    denoiser = ScriptedDenoiser(logits)
    cfg = D.SamplerConfig(steps=6, stop_entropy=100.0)  # stable after one repeat, and always "confident"
    answer, steps = D.denoise(denoiser, D.KeyStreams([1, 2]), cfg, canvas_length=8, vocab_size=50)
    assert list(steps) == [2, 2]
    assert (answer == target).all()


@pytest.mark.parametrize("sampler", ["entropy-bound", "confidence"])
def test_self_conditioning_is_on_temperature_scaled_logits(sampler):
    logits, _ = flat_logits(bump=3.0)
    denoiser = ScriptedDenoiser(logits)
    cfg = D.SamplerConfig(sampler=sampler, steps=5, stop_entropy=0.0, confidence_threshold=1.0)
    D.denoise(denoiser, D.KeyStreams([1, 2]), cfg, canvas_length=8, vocab_size=50)
    assert denoiser.fed_back[0] is None  # the first step has no self-conditioning
    assert len(denoiser.self_conditioning_inputs) == 4  # steps 5..2 feed the next step; the last one does not
    for remaining, given in zip(range(5, 1, -1), denoiser.self_conditioning_inputs):
        expected = logits / cfg.schedule(remaining)
        assert mx.array_equal(given, expected)
        assert not mx.allclose(given, logits)  # raw logits were the published port's bug


def test_schedule_counts_down_from_t_max():
    cfg = D.SamplerConfig(steps=48, t_min=0.4, t_max=0.8)
    assert cfg.schedule(48) == pytest.approx(0.8)
    assert cfg.schedule(1) == pytest.approx(0.4 + 0.4 / 48)
    assert cfg.schedule(24) == pytest.approx(0.6)


def test_entropy_bound_mask_matches_transformers():
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (EntropyBoundSampler,
                                                                                EntropyBoundSamplerConfig)

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 16, 40)) * rng.uniform(0.5, 20, size=(3, 16, 1))).astype(np.float32)
    reference = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.1), 16, 40, 48)
    reference.accept_canvas(torch.zeros(3, 16, dtype=torch.long), torch.ones(3, 16, dtype=torch.long),
                            torch.tensor(logits), 1)
    ours = D.entropy_bound_mask(D.token_entropy(mx.array(logits)), 0.1)
    assert np.array_equal(np.array(ours), reference.accepted_token_mask.numpy())
    assert 0 < np.array(ours).sum() < ours.size


def test_confidence_mask_accepts_at_least_one_unrevealed():
    confidence = mx.array([[0.95, 0.2, 0.5], [0.1, 0.3, 0.2]])
    unrevealed = mx.array([[True, True, True], [True, False, True]])
    mask = np.array(D.confidence_mask(confidence, unrevealed, 0.9))
    assert mask.tolist() == [[True, False, False], [False, False, True]]


def test_key_streams_replay_the_global_generator_per_row():
    seeds = [3, 11, 2**40 + 5]
    streams = D.KeyStreams(seeds)
    first, second = streams.randint(1000, 12), streams.randint(1000, 12)
    logits = mx.random.normal((3, 12, 30), key=mx.random.key(0))
    sampled = streams.categorical(logits)
    for row, seed in enumerate(seeds):
        mx.random.seed(seed)
        assert mx.array_equal(first[row], mx.random.randint(0, 1000, (1, 12))[0])
        assert mx.array_equal(second[row], mx.random.randint(0, 1000, (1, 12))[0])
        assert mx.array_equal(sampled[row], mx.random.categorical(logits[row:row + 1])[0])


def test_buckets_left_padding_and_plan():
    assert D.bucket_length(1, 32) == 32 and D.bucket_length(33, 32) == 64
    queues = D.plan_queues([5, 40, 31, 70, 33, 2, 50], bucket=32, size=2)
    assert queues == [[1, 4], [3], [0, 2], [6], [5]]  # buckets 32: 0 2 5, 64: 1 4 6, 96: 3; most work first
    ids, mask = D.left_pad([[2, 5, 6], [2, 9]], 4, pad_id=0)
    assert ids.tolist() == [[0, 2, 5, 6], [0, 0, 2, 9]]
    assert mask.tolist() == [[False, True, True, True], [False, False, True, True]]
    assert D.left_pad([[2, 5]], 2, pad_id=0)[1] is None


def test_example_seed_depends_on_run_seed_and_id_only():
    assert D.example_seed(0, "a") == D.example_seed(0, "a") != D.example_seed(1, "a") != D.example_seed(0, "b")


def test_answer_text_stops_at_first_stop_token(dirs):
    from toolsel.model.chat import load_tokenizer

    tokenizer = load_tokenizer(dirs["plain"])
    ids = tokenizer("- Bash\n- Read", add_special_tokens=False)["input_ids"]
    turn_end = tokenizer.convert_tokens_to_ids("<turn|>")
    text, stopped = D.answer_text(tokenizer, ids + [turn_end, 40, 41], {1, turn_end})
    assert (text, stopped) == ("- Bash\n- Read", True)
    assert D.answer_text(tokenizer, ids, {1})[1] is False


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        D.SamplerConfig(sampler="greedy")
    with pytest.raises(ValueError):
        D.SamplerConfig(t_min=0.9, t_max=0.8)


def test_prefill_bands_sliding_layers_and_keeps_the_logits(dirs, monkeypatch):
    """Eval's prefill (fast kernels) runs the sliding layers block-banded (fastmath.banded_attention) and the
    decoder's logits stay those of the full-attention prefill within rounding."""
    from toolsel.eval.kernels import use_fast_eval_kernels
    from toolsel.model.load import load_model
    from toolsel.train import fast

    model, _ = load_model(dirs["plain"])
    use_fast_eval_kernels(model)
    rng = random.Random(3)
    rows = [[2] + [rng.randrange(11, 500) for _ in range(n)] for n in (140, 99)]  # >= 3 windows of 32
    canvas = mx.array([[(i * 37 + r) % 60 for i in range(model.config.canvas_length)] for r in range(2)])
    calls = []
    banded = fast.banded_attention
    monkeypatch.setattr(fast, "banded_attention", lambda *a: calls.append(a[0].shape) or banded(*a))
    ours = D.prefill(model, rows, pad_id=0, length=160).logits(canvas, None)
    assert len(calls) == 5  # every sliding encoder layer of the tiny model, once
    monkeypatch.setattr(fast, "_prefill_window", lambda *a: 0)
    full = D.prefill(model, rows, pad_id=0, length=160).logits(canvas, None)
    assert mx.max(mx.abs(ours - full)).item() < 1e-4
