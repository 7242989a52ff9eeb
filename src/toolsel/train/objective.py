"""The block-diffusion training objective for DiffusionGemma on MLX (shared/docs/recipe.md, reference.md).

v1 (default): D3PM-uniform corruption with one t ~ U(t_min, 1) per example (each canvas position replaced w.p. t by a
token uniform over the whole vocabulary), the encoder reads the left-padded prompt into a KV cache, the decoder
denoises the corrupted canvas attending to it, and the loss is flat unweighted cross-entropy over every canvas
position on fp32 soft-capped logits through the tied embedding.
v2 options (off by default): the encoder's causal next-token loss over the clean prompt + canvas, and two-pass
self-conditioning enabled per example with some probability.

One canvas per example: responses longer than `canvas_length` are rejected at render (the render stage counts them),
so block-by-block training of long responses is not needed here. A later block would be trained by passing the
prompt plus the earlier clean blocks as `prompt`; nothing below assumes block 0.

Padding: prompts are LEFT-padded (mlx-vlm takes one RoPE offset per batch, so left padding keeps every example's
relative positions; reference.md measured it exact). `prompt_mask` masks padded keys in the encoder and in the
decoder's view of the encoder cache; padded query rows attend to themselves only, so no row is fully masked.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from toolsel.fastmath import softcap_cross_entropy, softmax32
from toolsel.train.fast import fast_cross_entropy
from toolsel.train.joint import joint_hidden


class TrainCache:
    """One layer's encoder KV, kept whole: no preallocation or rotation, so gradients reach the encoder through it.

    Sliding layers keep every key too; their window is applied by the masks (encoder) and by the decoder's trim to
    the last `sliding_window - 1` keys, exactly as mlx-vlm does for a plain `KVCache`.
    """

    def __init__(self):
        self.keys = None
        self.values = None
        self.offset = 0

    def update_and_fetch(self, keys, values):
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = mx.concatenate([self.keys, keys], axis=2)
            self.values = mx.concatenate([self.values, values], axis=2)
        self.offset = self.keys.shape[2]
        return self.keys, self.values

    @property
    def state(self):
        return self.keys, self.values


class PrefixView:
    """The first `length` positions of a `TrainCache`, without copying: what the decoder may see of it."""

    def __init__(self, cache: TrainCache, length: int):
        self.keys = cache.keys[..., :length, :]
        self.values = cache.values[..., :length, :]
        self.offset = length

    @property
    def state(self):
        return self.keys, self.values


def vocab_size(model) -> int:
    return model.config.text_config.vocab_size


def corrupt(key: mx.array, canvas: mx.array, vocab: int, t_min: float = 1e-3) -> tuple[mx.array, mx.array]:
    """D3PM-uniform noise: per example t ~ U(t_min, 1); each position replaced w.p. t by a uniform token. (noisy, t)"""
    k_t, k_mask, k_tok = mx.random.split(key, 3)
    batch, length = canvas.shape
    t = mx.random.uniform(low=t_min, high=1.0, shape=(batch,), key=k_t)
    replace = mx.random.uniform(shape=(batch, length), key=k_mask) < t[:, None]
    noise = mx.random.randint(0, vocab, (batch, length), key=k_tok).astype(canvas.dtype)
    return mx.where(replace, noise, canvas), t


def encoder_masks(model, key_mask: mx.array) -> list[mx.array]:
    """Boolean [B, 1, L, L] causal masks per layer (sliding window on sliding layers), padded keys masked.

    A padded query row keeps its own diagonal, so no softmax row is fully masked (mlx-vlm's own encoder masks leave
    such rows; MLX's CPU kernel survives them, but a backend that returns NaN there would poison the gradients).
    """
    length = key_mask.shape[1]
    pos = mx.arange(length)
    causal = pos[:, None] >= pos[None, :]
    valid = key_mask.astype(mx.bool_)[:, None, None, :]
    diagonal = mx.eye(length, dtype=mx.bool_)
    window = model.config.text_config.sliding_window
    by_type = {}
    for layer_type in set(model.config.text_config.layer_types):
        allowed = causal & (pos[:, None] < pos[None, :] + window) if layer_type == "sliding_attention" else causal
        by_type[layer_type] = (allowed[None, None] & valid) | diagonal
    return [by_type[layer.layer_type] for layer in model.model.decoder.layers]


def encode(model, input_ids: mx.array, key_mask: mx.array) -> tuple[mx.array, list[TrainCache]]:
    """Run the encoder over left-padded `input_ids`; returns its final hidden states and per-layer caches.

    The same layer calls as mlx-vlm's `EncoderModel.__call__` (identical results and gradients on CPU, tested), with
    our masks (see `encoder_masks`) and caches that keep the autodiff graph.
    """
    encoder = model.model.encoder
    caches = [TrainCache() for _ in model.model.decoder.layers]
    h = encoder._embed_inputs(input_ids)
    for layer, cache, mask, scalar in zip(
        model.model.decoder.layers, caches, encoder_masks(model, key_mask), encoder.language_model.layers
    ):
        h = layer(h, mask, cache, decoder=False, layer_scalar=scalar.layer_scalar)
    return model.model.decoder.norm(h), caches


def softcapped_logits(model, hidden: mx.array) -> mx.array:
    """fp32 soft-capped logits through the tied embedding (works for a quantized embedding too)."""
    return model._softcap(model.model.decoder.embed_tokens.as_linear(hidden))


def token_cross_entropy(model, hidden: mx.array, targets: mx.array) -> mx.array:
    """Per-position CE of the fp32 soft-capped logits of `hidden` against `targets` (the fast kernels fuse the
    soft-cap into the loss: toolsel.train.fast)."""
    if fast_cross_entropy(model):
        logits = model.model.decoder.embed_tokens.as_linear(hidden)
        return softcap_cross_entropy(logits, targets, float(model.final_logit_softcapping))
    return nn.losses.cross_entropy(softcapped_logits(model, hidden), targets, reduction="none")


def self_conditioning_embeddings(model, logits: mx.array, select: mx.array | None = None) -> mx.array:
    """softmax(logits) @ E * sqrt(hidden), as the reference decoder builds them; rows of unselected examples are 0."""
    decoder = model.model.decoder
    embed = decoder.embed_tokens
    if fast_cross_entropy(model):
        probs = softmax32(logits)[0]
    else:
        probs = mx.softmax(logits.astype(mx.float32), axis=-1, precise=True)
    if isinstance(embed, nn.QuantizedEmbedding):
        soft = mx.quantized_matmul(
            probs.astype(embed.scales.dtype),
            embed.weight,
            embed.scales,
            embed.biases,
            transpose=False,
            group_size=embed.group_size,
            bits=embed.bits,
            mode=getattr(embed, "mode", "affine"),
        )
    else:
        soft = probs.astype(embed.weight.dtype) @ embed.weight
    soft = soft * decoder.embed_scale
    if select is not None:
        soft = soft * select.astype(soft.dtype)[:, None, None]
    return soft


def decode_hidden(model, canvas: mx.array, caches, prompt_mask: mx.array, sc_embeddings: mx.array | None = None):
    """Decoder hidden states [B, C, D] for `canvas` attending to `caches`; padded encoder keys masked by
    `prompt_mask`."""
    decoder_mask = mx.concatenate(
        [prompt_mask.astype(mx.bool_), mx.ones(canvas.shape, dtype=mx.bool_)], axis=1
    )
    return model.model.decoder(
        canvas,
        cache=caches,
        self_conditioning_embeddings=sc_embeddings,
        decoder_attention_mask=decoder_mask,
    )


def decode(model, canvas: mx.array, caches, prompt_mask: mx.array, sc_embeddings: mx.array | None = None):
    """Decoder logits [B, C, V] (fp32, soft-capped) of `decode_hidden`."""
    return softcapped_logits(model, decode_hidden(model, canvas, caches, prompt_mask, sc_embeddings))


def encoder_ar_loss(model, hidden: mx.array, tokens: mx.array, mask: mx.array) -> mx.array:
    """Mean next-token CE of the encoder's soft-capped logits over real (non-pad) target positions."""
    valid = (mask[:, 1:] * mask[:, :-1]).astype(mx.float32)
    ce = token_cross_entropy(model, hidden[:, :-1], tokens[:, 1:])
    return (ce * valid).sum() / mx.maximum(valid.sum(), 1.0)


def denoising_losses(
    model,
    batch: dict,
    noisy: mx.array,
    *,
    self_cond: mx.array | None = None,
    with_encoder_loss: bool = False,
    joint: bool = True,
) -> tuple[mx.array, mx.array | None]:
    """Per-position CE [B, C] of the decoder on `noisy` against `batch["canvas"]`, and the encoder AR loss (or None).

    `self_cond` (bool [B]) runs the two-pass scheme: a first decoder pass without gradient and with zero
    self-conditioning, whose soft-capped logits condition the second pass for the selected examples only.
    Without either v2 option (and with `joint`), encoder and decoder run as one pass per layer over
    [prompt; canvas] (`toolsel.train.joint`): the same function, half the graph.
    """
    prompt, prompt_mask, canvas = batch["prompt"], batch["prompt_mask"], batch["canvas"]
    if joint and self_cond is None and not with_encoder_loss:
        hidden = joint_hidden(model, prompt, prompt_mask, noisy, encoder_masks(model, prompt_mask))
        return token_cross_entropy(model, hidden, canvas), None
    ar_loss = None
    if with_encoder_loss:
        # The encoder reads the whole clean sequence; the decoder sees only the prompt's part of its KV.
        tokens = mx.concatenate([prompt, canvas], axis=1)
        mask = mx.concatenate([prompt_mask, mx.ones(canvas.shape, dtype=prompt_mask.dtype)], axis=1)
        hidden, full = encode(model, tokens, mask)
        ar_loss = encoder_ar_loss(model, hidden, tokens, mask)
        caches = [PrefixView(cache, prompt.shape[1]) for cache in full]
    else:
        _, caches = encode(model, prompt, prompt_mask)

    sc_embeddings = None
    if self_cond is not None:
        first = mx.stop_gradient(decode(model, noisy, caches, prompt_mask))
        sc_embeddings = self_conditioning_embeddings(model, first, self_cond)
    ce = token_cross_entropy(model, decode_hidden(model, noisy, caches, prompt_mask, sc_embeddings), canvas)
    return ce, ar_loss


def diffusion_loss(
    model,
    batch: dict,
    key: mx.array,
    *,
    t_min: float = 1e-3,
    encoder_loss_weight: float = 0.0,
    self_cond_prob: float = 0.0,
) -> tuple[mx.array, mx.array]:
    """(loss, ntokens): mean CE over all B*C canvas positions (+ weight * encoder AR loss); deterministic given key.

    batch: `prompt` int32 [B, P] left-padded, `prompt_mask` [B, P] (1 = real token), `canvas` int32 [B, C] clean.
    """
    canvas = batch["canvas"]
    k_noise, k_self_cond = mx.random.split(key)
    noisy, _ = corrupt(k_noise, canvas, vocab_size(model), t_min)
    self_cond = None
    if self_cond_prob > 0:
        self_cond = mx.random.uniform(shape=(canvas.shape[0],), key=k_self_cond) < self_cond_prob
    ce, ar_loss = denoising_losses(
        model, batch, noisy, self_cond=self_cond, with_encoder_loss=encoder_loss_weight > 0
    )
    loss = ce.mean()
    if ar_loss is not None:
        loss = loss + encoder_loss_weight * ar_loss
    return loss, mx.array(canvas.size, dtype=mx.int32)
