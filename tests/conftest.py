"""Shared session fixtures: one small tokenizer and one tiny fp32 DiffusionGemma directory (random weights, seed 0)."""

from __future__ import annotations

import pytest

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|channel>", "<channel|>",
            "<|image|>", "<|video|>"]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] if m['role'] != 'assistant' else 'model' }}\n"
    "{{ m['content'] | trim }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n<|channel>thought\n<channel|>{% endif %}"
)
TEXTS = [f"task {i}: fix the bug in module {i % 7} and run the tests; read files, edit, grep" for i in range(200)]
TEXTS += ["- Bash\n- Read\n- Edit\n- Grep\n- Glob\n- Write"]


def build_test_tokenizer(out_dir, vocab_size: int = 512):
    """The render helper's `build_tokenizer` when present, else a byte-level BPE with the special tokens."""
    try:
        from toolsel.model.tokenizer import build_tokenizer
    except ImportError:
        build_tokenizer = None
    if build_tokenizer is not None:
        build_tokenizer(TEXTS, vocab_size, out_dir)
        return out_dir
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(str(out_dir))
    (out_dir / "chat_template.jinja").write_text(TEMPLATE)
    return out_dir


@pytest.fixture(scope="session")
def model_tokenizer_dir(tmp_path_factory):
    return build_test_tokenizer(tmp_path_factory.mktemp("model-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, model_tokenizer_dir):
    """The default `tiny_config()` built with random weights (seed 0); read-only for tests."""
    from toolsel.model.tiny import build_tiny, tiny_config

    return build_tiny(tmp_path_factory.mktemp("tiny-model"), model_tokenizer_dir, tiny_config(), seed=0)
