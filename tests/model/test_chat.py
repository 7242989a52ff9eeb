"""Tokenizer and chat template: Gemma 4 format with thinking off, exact prompt/response boundary, one <bos>."""

import json
import subprocess
import sys

import pytest

from toolsel.model.chat import (build_canvas, encode_prompt, encode_prompts, encode_response, format_response,
                                load_tokenizer, prompt_renderer, read_canvas_length, render_prompt)
from toolsel.model.tokenizer import SPECIAL_TOKENS, build_tokenizer

TEXTS = [f"fix the failing test {i} in src/module_{i % 5}.py and run pytest" for i in range(300)]
TEXTS += ["Bash", "Read", "Edit", "mcp__github__create_issue"]
SYSTEM = "You are a tool router. List the tools."


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(TEXTS, 400, out)
    (out / "config.json").write_text(json.dumps({"model_type": "diffusion_gemma", "canvas_length": 16}))
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def hand_built(system, user):
    return (f"<bos><|turn>system\n{system.strip()}<turn|>\n<|turn>user\n{user.strip()}<turn|>\n"
            f"<|turn>model\n<|channel>thought\n<channel|>")


def test_directory_files_and_special_ids(tok_dir, tok):
    assert {p.name for p in tok_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert len(tok) <= 400 and tok.image_token == "<|image|>" and tok.video_token == "<|video|>"
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")  # not GemmaTokenizer
    assert str(tok_dir) not in (tok_dir / "tokenizer_config.json").read_text()


def test_apply_chat_template_matches_the_gemma4_format(tok):
    for system, user in [(SYSTEM, "Fix the bug"), ("  padded system \n", "\n  padded  user text \t"),
                         ("s", "multi\nline\n\ntask")]:
        text = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                       add_generation_prompt=True, enable_thinking=False, tokenize=False)
        assert text == hand_built(system, user)
        assert render_prompt(tok, system, user) == hand_built(system, user).removeprefix("<bos>")


def test_template_other_paths(tok):
    default = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                      tokenize=False)
    assert default == "<bos><|turn>user\nhi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"  # thinking off
    thinking = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                                       add_generation_prompt=True, enable_thinking=True, tokenize=False)
    assert thinking == "<bos><|turn>system\n<|think|>\nS<turn|>\n<|turn>user\nhi<turn|>\n<|turn>model\n"
    history = tok.apply_chat_template([{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>- Bash"}],
                                      tokenize=False)
    assert history == "<bos><|turn>user\nhi<turn|>\n<|turn>model\n- Bash<turn|>\n"
    parts = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": " a "}]}],
                                    add_generation_prompt=True, enable_thinking=False, tokenize=False)
    assert parts == "<bos><|turn>user\na<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"


def test_prompt_response_boundary_is_exact(tok):
    prompt = render_prompt(tok, SYSTEM, "Fix the failing test in src/module_1.py")
    response = format_response(["Bash", "Read", "mcp__github__create_issue"])
    assert response == "- Bash\n- Read\n- mcp__github__create_issue<turn|>"
    p_ids, r_ids = encode_prompt(tok, prompt), encode_response(tok, response)
    assert p_ids + r_ids == tok.encode("<bos>" + prompt + response, add_special_tokens=False)
    assert tok.decode(p_ids) == "<bos>" + prompt and prompt.endswith("<|channel>thought\n<channel|>")
    assert p_ids[-1] == tok.convert_tokens_to_ids("<channel|>")
    assert r_ids[-1] == tok.convert_tokens_to_ids("<turn|>")
    assert tok.decode(r_ids) == response  # tool names round-trip, even unseen ones
    assert tok.decode(encode_response(tok, "- Ünïcödé_Tool🙂<turn|>")) == "- Ünïcödé_Tool🙂<turn|>"


def test_exactly_one_bos(tok):
    prompt = render_prompt(tok, SYSTEM, "task")
    ids = encode_prompt(tok, prompt)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert encode_prompt(tok, "<bos>" + prompt) == ids  # a <bos> already in the text is not doubled
    assert tok.encode(prompt) == tok.encode(prompt, add_special_tokens=False)  # no post-processor <bos>
    assert encode_prompts(tok, [prompt, "x"]) == [ids, encode_prompt(tok, "x")]


def test_fast_renderer_agrees_with_template(tok):
    render = prompt_renderer(tok, SYSTEM, check_every=1)
    for user in ["a", "  spaced  ", "multi\nline", "quotes ' \" {{ braces }} {% raw %}"]:
        assert render(user) == render_prompt(tok, SYSTEM, user)


def test_canvas(tok):
    ids = encode_response(tok, format_response(["Read"]))
    canvas = build_canvas(ids, 16, tok.eos_token_id)
    assert len(canvas) == 16 and canvas[:len(ids)] == ids and set(canvas[len(ids):]) == {tok.eos_token_id}
    assert build_canvas(ids, len(ids), 1) == ids
    with pytest.raises(ValueError, match="does not fit"):
        build_canvas(ids, len(ids) - 1, 1)


def test_load_tokenizer_local_only_and_clear_errors(tmp_path, tok_dir):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    assert read_canvas_length(tok_dir) == 16
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="canvas_length"):
        read_canvas_length(tmp_path)
    # a hub id is not a directory: refused before any network access
    with pytest.raises(FileNotFoundError):
        load_tokenizer("google/diffusiongemma-26B-A4B-it")


def test_build_is_deterministic_across_processes(tmp_path):
    code = ("import sys; from toolsel.model.tokenizer import build_tokenizer; "
            "texts = [f'word{i % 37} w{i % 11}x{i % 3} some/path_{i}.py' for i in range(500)]; "
            "build_tokenizer(texts, 600, sys.argv[1])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_vocab_size_floor(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["x"], 100, tmp_path)
