"""Encoder and decoder of one training example in ONE pass per layer: [prompt; canvas] as a single sequence.

DiffusionGemma's encoder and decoder run the same layer objects, and decoder layer i attends to the KV that encoder
layer i computed from its own input, so both halves of layer i depend only on layer i-1's outputs. Training
therefore runs each layer once over the concatenated sequence: one projection, norm, MLP, router and experts call
over P + C tokens instead of two calls over P and C (half the graph's ops, larger matmuls). Only attention differs
by half, and `JointMask` splits it into the two calls mlx-vlm makes:

- prompt queries attend to prompt keys with the encoder's mask (causal, sliding window, padding);
- canvas queries attend to [prompt keys; canvas keys] with mlx-vlm's own decoder mask, sliding layers first
  dropping the out-of-window prompt keys exactly as mlx-vlm's decoder does.

The rest is the same computation: rotary positions 0..P+C-1 are the encoder's 0..P-1 and the decoder's offset P;
per-token ops do not see the concatenation; the encoder's and decoder's layer scalars multiply their own halves.
The last layer runs as mlx-vlm runs it (encoder call, then decoder call): its prompt rows matter only through their
keys and values, so the rest of the encoder's last layer is never computed (as in the two-pass path, where the
unread encoder output is pruned from the graph); joining it would cost an eighth more of the layers' work. (Under
gradient checkpointing the checkpoint computes that output anyway, as it did for the two-pass path.)
With LoRA dropout on, a projection draws one mask over [prompt; canvas] instead of one per half: the same
distribution and the same determinism given the key, other draws than the two-pass path.
tests/train/test_joint.py checks loss and every gradient against the two-pass path (encoder into caches, then the
decoder), which stays in use for the encoder AR loss (its decoder sees a prefix of a longer encoder sequence) and
for two-pass self-conditioning.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_vlm.models.diffusion_gemma import language

from toolsel.train import fast


class JointMask:
    """The attention "mask" of a joint layer call: how to split it into the encoder's and the decoder's attention."""

    def __init__(self, prompt_length: int, encoder_mask, decoder_mask, window: int):
        self.prompt_length, self.encoder_mask, self.decoder_mask, self.window = (
            prompt_length, encoder_mask, decoder_mask, window)

    def split_attention(self, queries, keys, values, scale, sdpa):
        """[B, H, P+C, D] attention output of both halves; `sdpa(q, k, v, cache, scale, mask)` computes each."""
        p = self.prompt_length
        canvas = queries.shape[2] - p
        prompt_out = sdpa(queries[:, :, :p], keys[:, :, :p], values[:, :, :p], None, scale, self.encoder_mask)
        start, mask = 0, self.decoder_mask
        if self.window and p > self.window:  # mlx-vlm's decoder: only the last `window` prompt keys can be seen
            start = p - self.window
            if isinstance(mask, mx.array):
                mask = mask[..., -(self.window + canvas):]
        canvas_out = sdpa(queries[:, :, p:], keys[:, :, start:], values[:, :, start:], None, scale, mask)
        return mx.concatenate([prompt_out, canvas_out], axis=2)


class _PromptKV:
    """An encoder cache for one layer: records the prompt's keys and values (encoder call) and serves them (decoder
    call). `length` alone makes the stand-in that mlx-vlm's `_make_decoder_masks` reads (shapes only, never
    computed)."""

    def __init__(self, batch: int = 0, length: int = 0):
        self.keys = self.values = mx.zeros((batch, 1, length, 1)) if length else None
        self.offset = length

    def update_and_fetch(self, keys, values):
        self.keys, self.values, self.offset = keys, values, keys.shape[2]
        return keys, values

    @property
    def decoder_state(self):
        return self.keys, self.values


def _canvas_embeddings(decoder, canvas: mx.array) -> mx.array:
    """mlx-vlm's `decoder._embed_canvas(canvas)` with no self-conditioning: its zero signal makes the
    self-conditioning MLP's output exactly 0 (no biases, gelu(0) = 0), and its weights' gradients exactly 0, so
    only the final norm is computed here (the same bits, without the MLP's matmuls forward and backward)."""
    return decoder.self_conditioning.post_norm(decoder.embed_tokens(canvas) * decoder.embed_scale)


def install() -> None:
    """Route mlx-vlm's attention through toolsel's dispatcher, which splits joint calls (idempotent; a plain call
    still goes to whichever kernel it went to before)."""
    language.scaled_dot_product_attention = fast.dispatch_sdpa


def joint_hidden(model, prompt: mx.array, prompt_mask: mx.array, canvas: mx.array, encoder_masks) -> mx.array:
    """Decoder hidden states [B, C, D] of `canvas` (no self-conditioning) given the left-padded `prompt`: the same
    function as `objective.encode` followed by `objective.decode_hidden`, one layer call each.
    `encoder_masks`: the encoder's per-layer masks (`objective.encoder_masks`)."""
    install()
    decoder, encoder = model.model.decoder, model.model.encoder
    batch, p = prompt.shape
    c = canvas.shape[1]
    canvas_embeds = _canvas_embeddings(decoder, canvas)
    h = mx.concatenate([encoder._embed_inputs(prompt), canvas_embeds], axis=1)
    full_mask = mx.concatenate([prompt_mask.astype(mx.bool_), mx.ones(canvas.shape, dtype=mx.bool_)], axis=1)
    decoder_masks = decoder._make_decoder_masks(canvas_embeds, [_PromptKV(batch, p)] * len(decoder.layers), full_mask)
    window = max(model.config.text_config.sliding_window - 1, 0)
    layers = list(zip(decoder.layers, encoder_masks, encoder.language_model.layers))
    for layer, encoder_mask, encoder_layer in layers[:-1]:
        sliding = layer.layer_type == "sliding_attention"
        mask = JointMask(p, encoder_mask, decoder_masks.get(layer.layer_type), window if sliding else 0)
        scalar = mx.concatenate([mx.broadcast_to(encoder_layer.layer_scalar, (p,)),
                                 mx.broadcast_to(layer.layer_scalar, (c,))])[:, None]
        h = layer(h, mask, None, decoder=False, layer_scalar=scalar)
    # The last layer's prompt rows feed only the canvas's attention: the encoder call records their keys and values
    # (its output is never read, so never computed), the decoder call runs the canvas rows alone.
    layer, encoder_mask, encoder_layer = layers[-1]
    kv = _PromptKV()
    layer(h[:, :p], encoder_mask, kv, decoder=False, layer_scalar=encoder_layer.layer_scalar)
    h = layer(h[:, p:], decoder_masks.get(layer.layer_type), kv, decoder=True, offset=p)
    return decoder.norm(h)
