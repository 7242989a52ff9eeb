"""The base stage's core: the tiny model is built, pretrained on task texts only, and loads like a real one."""

from __future__ import annotations

import json

import pytest

from toolsel.io import sha256_file
from toolsel.model.base import build_tiny_base, describe_real_base
from toolsel.model.identity import IDENTITY, resolve_model_dir
from toolsel.model.pretrain import text_examples

TEXTS = [f"fix the failing test in module_{i % 9}.py then run pytest and grep for TODO {i}" for i in range(48)]
TOOLS = ["Bash", "Read", "Edit", "Grep", "TodoWrite", "mcp__github__create_pull_request"]
TINY = {"vocab_size": 400, "quantize_bits": 0, "config": {"canvas_length": 16}}
PRETRAIN = {"steps": 4, "batch_size": 8, "lr": 3e-3, "encoder_loss_weight": 1.0, "max_prompt_tokens": 64, "shards": 2}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    metrics = build_tiny_base(TEXTS, TOOLS, out, tiny=TINY, pretrain=PRETRAIN, seed=0, stage_version="1",
                              log=lambda m: None)
    return out, metrics


def test_tiny_base_is_a_loadable_pretrained_model_dir(tiny_base):
    from toolsel.model.load import load_model, validate_model_dir

    out, metrics = tiny_base
    validate_model_dir(out)
    model, tokenizer = load_model(out)
    assert model.config.canvas_length == 16
    assert metrics["pretrain_steps"] == PRETRAIN["steps"]
    assert metrics["pretrain_loss_last"] < metrics["pretrain_loss_first"]
    assert resolve_model_dir(out) == out
    # tool names are vocabulary (absent from the texts, yet one token each): a response line costs two tokens
    assert len(tokenizer.encode("- TodoWrite", add_special_tokens=False)) == 2


def test_tiny_base_is_deterministic(tiny_base, tmp_path):
    out, _ = tiny_base
    again = tmp_path / "again"
    build_tiny_base(TEXTS, TOOLS, again, tiny=TINY, pretrain=PRETRAIN, seed=0, stage_version="1", log=lambda m: None)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_file(out / name) == sha256_file(again / name), name


def test_pretraining_examples_come_from_the_texts_alone(tiny_base):
    from toolsel.model.chat import load_tokenizer

    tokenizer = load_tokenizer(tiny_base[0])
    examples = text_examples(tokenizer, TEXTS, 16, 128, seed=0)
    assert len(examples) == 2 * len(TEXTS)  # a continuation and an echo per text
    eos, end = tokenizer.convert_tokens_to_ids("<eos>"), tokenizer.convert_tokens_to_ids("<turn|>")
    for i, text in enumerate(TEXTS):
        continuation, echo = examples[2 * i], examples[2 * i + 1]
        canvas = [t for t in continuation.canvas if t != eos]
        # prefix + continuation of the task text, nothing else (no tool lists)
        assert text.startswith(tokenizer.decode(list(continuation.prompt[1:]) + canvas))
        # echo: the text as a chat user turn -> its first tokens, `<turn|>`, `<eos>` fill
        assert text in tokenizer.decode(list(echo.prompt))
        answer = list(echo.canvas)
        stop = answer.index(end)
        assert text.startswith(tokenizer.decode(answer[:stop]))
        assert set(answer[stop + 1:]) <= {eos}
        assert len(continuation.canvas) == len(echo.canvas) == 16


def test_tiny_init_scales_the_residual_branch_norms():
    from toolsel.model.tiny import init_weights, tiny_config

    weights = init_weights(tiny_config(), seed=0)
    layers = tiny_config()["text_config"]["num_hidden_layers"]
    branch = [w for n, w in weights.items() if n.endswith(".post_feedforward_layernorm.weight")]
    assert len(branch) == layers and all(abs(w.max().item() - (2 * layers) ** -0.5) < 1e-7 for w in branch)
    other = [w for n, w in weights.items() if n.endswith(".input_layernorm.weight")]
    assert all(w.min().item() == 1.0 for w in other)


def test_real_base_is_recorded_not_copied(tiny_model_dir, tmp_path):
    out = tmp_path / "base"
    identity = describe_real_base(tiny_model_dir, out, "1")
    assert sorted(p.name for p in out.iterdir()) == [IDENTITY]  # no weights copied
    assert resolve_model_dir(out) == tiny_model_dir.resolve()
    assert json.loads((out / IDENTITY).read_text())["path"] == str(tiny_model_dir.resolve())
    assert identity["kind"] == "real"


def test_a_directory_that_is_not_diffusiongemma_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="diffusion_gemma"):
        describe_real_base(tmp_path, tmp_path / "out", "1")


def test_resolve_names_a_missing_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="toolsel base"):
        resolve_model_dir(tmp_path)


def test_tool_menus_list_every_tool_once_and_nothing_else():
    from toolsel.model.pretrain import tool_menus

    menus = tool_menus(TOOLS + ["Bash"], 5, seed=0)
    assert len(menus) == 5 and len(set(menus)) > 1  # shuffled
    for menu in menus:
        assert menu.startswith("Available tools: ")
        assert sorted(menu.removeprefix("Available tools: ").split(", ")) == sorted(set(TOOLS))
    assert tool_menus([], 5, seed=0) == []


def test_echo_target_matches_the_trimmed_user_turn(tiny_base):
    from toolsel.model.chat import load_tokenizer

    tokenizer = load_tokenizer(tiny_base[0])
    end = tokenizer.convert_tokens_to_ids("<turn|>")
    padded, plain = (text_examples(tokenizer, [t], 16, 128, seed=0) for t in ("  run pytest now \n", "run pytest now"))
    assert padded == plain  # surrounding whitespace changes neither the prompt nor the answer canvas
    echo = list(plain[1].canvas)
    assert tokenizer.decode(echo[:echo.index(end)]) == "run pytest now"
