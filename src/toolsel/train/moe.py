"""Routed experts as sgemm on tiles of one expert each, instead of one sgemv per (token, expert) pair.

mlx-vlm's `Experts` sorts the (token, expert) pairs and calls `gather_mm` with one row per pair; on CPU that is a
matrix-vector product per row, bound by reading the expert's weights again for every row. Here the sorted pairs
are laid out in tiles of `block` rows, each tile holding one expert's rows (an expert's last tile is padded with a
zero row), so each `gather_mm` batch element is a `block`-row matrix product. Shapes are static (the tile count
is the worst case over any routing), so nothing synchronises or recompiles, and the weight gradient still goes
through mlx's segmented matmul for sorted indices. Same function as mlx-vlm's; works for quantized experts too
(the `SwitchLinear` layers are called as they are).

Moving rows into tiles and back are gathers whose gradients are gathers too (`_to_tiles`, `_from_tiles`), not
mlx's scatter-add: on the CPU a row scatter-add runs ~20x slower than a row gather (2.1 vs 0.1 ms for the bench's
1152 x 256 tile rows, measured), and there are two per expert layer in the backward pass.
"""

from __future__ import annotations

import mlx.core as mx


def expert_tiles(top_k_indices: mx.array, num_experts: int, block: int):
    """(pair of each padded tile row (n_pairs = a padding row), expert of each tile, padded row of each
    (token, choice) pair in row-major order). Pair p is token p // k's choice p % k. Index arrays, no gradient."""
    tokens, k = top_k_indices.shape
    pairs = tokens * k
    flat = mx.stop_gradient(top_k_indices).reshape(-1).astype(mx.uint32)
    order = mx.argsort(flat)  # pairs sorted by expert
    sorted_expert = flat[order]
    counts = (flat[:, None] == mx.arange(num_experts, dtype=mx.uint32)[None]).astype(mx.uint32).sum(0)
    padded = (counts + block - 1) // block * block
    padded_end = mx.cumsum(padded)
    first = mx.cumsum(counts) - counts  # each expert's first position in sorted order
    slot = (padded_end - padded)[sorted_expert] + mx.arange(pairs, dtype=mx.uint32) - first[sorted_expert]
    tiles = -(-(pairs + num_experts * (block - 1)) // block)
    row_pair = mx.full((tiles * block,), pairs, dtype=mx.uint32)
    row_pair = mx.put_along_axis(row_pair, slot, order.astype(mx.uint32), axis=0)
    tile_start = mx.arange(tiles, dtype=mx.uint32)[:, None] * block
    tile_expert = mx.minimum((tile_start >= padded_end[None]).astype(mx.uint32).sum(1), num_experts - 1)
    pair_row = slot[mx.argsort(order)]
    return mx.stop_gradient(row_pair), mx.stop_gradient(tile_expert), mx.stop_gradient(pair_row)


def _with_zero_row(rows: mx.array) -> mx.array:
    """[N, D] -> [N + 1, D]: index N reads zeros (the padding rows' source)."""
    return mx.concatenate([rows, mx.zeros((1, rows.shape[-1]), rows.dtype)], axis=0)


@mx.custom_function
def _to_tiles(x, row_source, pair_row):
    """x [T, D] -> its rows in padded tile order (row_source: token of each padded row, T = a zero row)."""
    return _with_zero_row(x)[row_source]


@_to_tiles.vjp
def _to_tiles_vjp(primals, cotangent, output):
    # token t's gradient: the sum of its k padded rows' (pair_row [T, k]), a gather instead of a scatter-add
    x, row_source, pair_row = primals
    grad = cotangent[pair_row].sum(axis=1)
    return grad, mx.zeros_like(row_source), mx.zeros_like(pair_row)


@mx.custom_function
def _from_tiles(y, pair_row, row_pair):
    """Padded tile rows y [R, D] -> each (token, choice) pair's row, [T * k, D] (row_pair: the inverse map)."""
    return y[pair_row]


@_from_tiles.vjp
def _from_tiles_vjp(primals, cotangent, output):
    # every padded row takes its pair's gradient, padding rows (row_pair = n_pairs) the appended zero row
    y, pair_row, row_pair = primals
    return _with_zero_row(cotangent)[row_pair], mx.zeros_like(pair_row), mx.zeros_like(row_pair)


def blocked_experts(gate_up_proj, down_proj, activation, hidden_dims: int, x: mx.array, top_k_indices: mx.array,
                    block: int = 16) -> mx.array:
    """mlx-vlm `Experts.__call__(x [T, D], top_k_indices [T, k])` -> [T, k, D], computed tile by tile."""
    tokens, k = top_k_indices.shape
    num_experts = gate_up_proj["weight"].shape[0]
    row_pair, tile_expert, pair_row = expert_tiles(top_k_indices, num_experts, block)
    row_source = row_pair // k  # padding rows (n_pairs = n_tokens * k) give n_tokens: the zero row
    tiles = _to_tiles(x, row_source, pair_row.reshape(tokens, k)).reshape(tile_expert.shape[0], block, x.shape[-1])
    gate_up = gate_up_proj(tiles, tile_expert, sorted_indices=True)
    gate, up = gate_up[..., :hidden_dims], gate_up[..., hidden_dims:]
    y = down_proj(activation(up, gate), tile_expert, sorted_indices=True)
    return _from_tiles(y.reshape(-1, y.shape[-1]), pair_row, row_pair).reshape(tokens, k, -1)
