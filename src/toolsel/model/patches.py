"""The adapter that makes mlx-vlm's inference-only DiffusionGemma trainable, without forking mlx-vlm.

Two changes, both numerically neutral (the forward pass computes the same ops in the same order):
- Router: the top-k indices are `stop_gradient`ed before they index `take_along_axis` and `per_expert_scale`.
  As shipped, `mx.value_and_grad` fails with "[gather] Cannot calculate VJP with respect to indices"; the
  `stop_gradient` inside `Experts` (only when `.training`) comes too late (shared/docs/measurements.md).
- `layer_scalar` (decoder layers and the encoder's per-layer copies) is a frozen buffer in the PyTorch reference but
  a parameter in MLX. It is pinned frozen: it stays out of `trainable_parameters()` even after a later
  `model.unfreeze()`, so neither gradients nor weight decay ever touch it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_vlm.models.diffusion_gemma.language import Router

BUFFERS = ("layer_scalar",)


class TrainableRouter(Router):
    """mlx-vlm's `Router` with the integer top-k indices cut from the autodiff graph."""

    def __call__(self, x):
        x = mx.fast.rms_norm(x, None, self.eps)
        x = x * self.scale * self._root_size
        scores = self.proj(x)
        top_k = self.config.top_k_experts
        indices = mx.stop_gradient(mx.argpartition(scores, kth=-top_k, axis=-1)[..., -top_k:])
        weights = mx.take_along_axis(scores, indices, axis=-1)
        weights = mx.softmax(weights, axis=-1, precise=True)
        weights = weights * self.per_expert_scale[indices]
        return indices, weights


class PinnedNoGrad(set):
    """A module's `_no_grad` set whose pinned keys survive `unfreeze()` (which calls clear/difference_update)."""

    def __init__(self, items=(), pinned=()):
        self.pinned = frozenset(pinned)
        super().__init__(set(items) | self.pinned)

    def clear(self):
        super().clear()
        self.update(self.pinned)

    def difference_update(self, *others):
        super().difference_update(*others)
        self.update(self.pinned)

    def discard(self, item):
        if item not in self.pinned:
            super().discard(item)

    def remove(self, item):
        if item not in self.pinned:
            super().remove(item)


def pin_frozen(module: nn.Module, keys=BUFFERS) -> None:
    if not isinstance(module._no_grad, PinnedNoGrad):
        module._no_grad = PinnedNoGrad(module._no_grad, pinned=keys)


def make_trainable(model: nn.Module) -> nn.Module:
    """Patch a loaded mlx-vlm DiffusionGemma in place for `value_and_grad` (idempotent); returns it.

    Call it on the model from `toolsel.model.load.load_model` before or after freezing / LoRA wrapping.
    """
    backbone = model.model
    for layer in backbone.decoder.layers:
        if type(layer.router) is Router:
            layer.router.__class__ = TrainableRouter  # same attributes and weights, new __call__
        pin_frozen(layer)
    for scalar_holder in backbone.encoder.language_model.layers:
        pin_frozen(scalar_holder)
    return model


def is_trainable(model: nn.Module) -> bool:
    return all(isinstance(layer.router, TrainableRouter) for layer in model.model.decoder.layers)
