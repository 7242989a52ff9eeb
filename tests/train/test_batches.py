"""Batching: left padding with a mask, few distinct prompt shapes, deterministic shuffles, exact resume position."""

from __future__ import annotations

import itertools

import mlx.core as mx
import pytest

from toolsel.train.batches import BatchStream, Example, collate, epoch_batches, fixed_batches

PAD = 0


def _examples(lengths, canvas=8) -> list[Example]:
    return [Example(tuple([2] + [10 + i] * (n - 1)), tuple([20 + i] * canvas)) for i, n in enumerate(lengths)]


def test_collate_left_pads_to_the_bucket():
    batch = collate(_examples([3, 40]), PAD, bucket=32)
    assert batch["prompt"].shape == (2, 64) and batch["canvas"].shape == (2, 8)
    assert batch["prompt"].dtype == mx.int32 and batch["canvas"].dtype == mx.int32
    row = batch["prompt"][0].tolist()
    assert row[:61] == [PAD] * 61 and row[61:] == [2, 10, 10]  # real tokens flush right
    assert batch["prompt_mask"][0].tolist() == [0] * 61 + [1] * 3
    assert batch["prompt_mask"][1].sum().item() == 40


def test_epoch_is_a_permutation_with_few_shapes():
    examples = _examples([5 + 3 * i for i in range(40)])
    plan = epoch_batches(examples, 4, 32, seed=0, epoch=0)
    assert sorted(itertools.chain(*plan)) == list(range(40))
    for group in plan:  # one bucket per batch
        assert len({-(-len(examples[i].prompt) // 32) for i in group}) == 1
    shapes = {collate([examples[i] for i in g], PAD, 32)["prompt"].shape[1] for g in plan}
    assert shapes <= {32, 64, 96, 128}
    assert epoch_batches(examples, 4, 32, seed=0, epoch=0) == plan
    assert epoch_batches(examples, 4, 32, seed=0, epoch=1) != plan
    assert epoch_batches(examples, 4, 32, seed=1, epoch=0) != plan


def test_stream_resumes_at_its_position():
    examples = _examples([5 + 3 * i for i in range(10)])
    straight = BatchStream(examples, 3, PAD, seed=7)
    first = [next(straight) for _ in range(5)]  # crosses the epoch boundary (4 batches per epoch here)
    assert straight.position["epoch"] == 1
    rest = [next(straight) for _ in range(4)]

    head = BatchStream(examples, 3, PAD, seed=7)
    assert all(_same(a, next(head)) for a in first)  # same seed, same order
    resumed = BatchStream(examples, 3, PAD, seed=7, position=head.position)
    assert all(_same(a, next(resumed)) for a in rest)


def _same(a: dict, b: dict) -> bool:
    return all(a[k].shape == b[k].shape and mx.array_equal(a[k], b[k]).item() for k in a)


def test_fixed_batches_cover_everything_once():
    examples = _examples([30, 5, 17, 70, 9])
    batches = fixed_batches(examples, 2, PAD, bucket=32)
    canvases = sorted(row[0] for b in batches for row in b["canvas"].tolist())
    assert canvases == [20, 21, 22, 23, 24]
    assert [b["prompt"].shape[1] for b in batches] == [32, 32, 96]


def test_encode_records_uses_the_chat_helpers(tiny_model_dir):
    from toolsel.model import chat
    from toolsel.train.batches import encode_records, special_id

    tokenizer = chat.load_tokenizer(tiny_model_dir)
    records = [{"id": "a", "prompt": "<|turn>user\nfix the bug<turn|>\n<|turn>model\n",
                "response": "- Bash\n- Read<turn|>"}]
    [example] = encode_records(records, tokenizer, canvas_length=32)
    assert example.prompt[0] == special_id(tokenizer, "<bos>") and example.prompt.count(example.prompt[0]) == 1
    eos, turn_end = special_id(tokenizer, "<eos>"), special_id(tokenizer, "<turn|>")
    end = example.canvas.index(turn_end)
    assert len(example.canvas) == 32 and set(example.canvas[end + 1:]) == {eos}
    with pytest.raises(ValueError, match="longer than the canvas"):
        encode_records(records, tokenizer, canvas_length=2)
