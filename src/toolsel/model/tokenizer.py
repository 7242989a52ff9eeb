"""Build the embedded tiny model's tokenizer: a byte-level BPE with DiffusionGemma's special tokens.

Facts it follows (shared/docs/reference.md, "The embedded tiny model"): the class stays the generic
tokenizers backend (`GemmaTokenizer` turned spaces into `<unk>`), `<|image|>` and `<|video|>` exist (the
processor adds them otherwise and the length changes), and no post-processor adds `<bos>` (the chat template
emits it; `chat.encode_prompt` adds it for raw text): one `<bos>`, never two.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Order fixes the ids: <pad>=0, <eos>=1, <bos>=2 as in the released model; the rest follow.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|channel>", "<channel|>",
                  "<|image|>", "<|video|>", "<|tool_response>"]
# Gemma 4's tokenizer_config names these; the Gemma 4 processor reads image/video tokens by these attributes.
NAMED_TOKENS = {"image_token": "<|image|>", "video_token": "<|video|>", "sot_token": "<|turn>",
                "eot_token": "<turn|>", "soc_token": "<|channel>", "eoc_token": "<channel|>",
                "str_token": "<|tool_response>"}
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # the specials and every byte


def chat_template_text() -> str:
    """The packaged chat template (the Gemma 4 text subset, thinking off by default)."""
    return resources.files("toolsel.model").joinpath("chat_template.jinja").read_text("utf-8")


def build_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (in the order given) and save it with the chat template to `out_dir`.

    Writes tokenizer.json, tokenizer_config.json and chat_template.jinja; the same texts give the same bytes.
    Every string is encodable (byte-level), so any tool name round-trips. `len(tokenizer) <= vocab_size`
    (fewer when the texts have fewer pairs worth merging).
    """
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} is below {MIN_VOCAB} (special tokens + 256 bytes)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                        extra_special_tokens=dict(NAMED_TOKENS))
    tokenizer.chat_template = chat_template_text()
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
