"""Categorical draws from unnormalised weights, float64 by default (see the sampling conventions).

The float64 passes over [M, S] weights run a block of rows at a time (``CHUNK_ELEMENTS`` elements,
4 MiB of float64): the per-row arithmetic is the same as over all rows at once (so are the draws),
but the cast and cumulative-sum temporaries stay small and in cache instead of being fresh
[M, S] float64 allocations (at SEDD-small shapes, 128 x 50257, a whole-tensor pass spent most of
its time faulting in new pages).
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 19  # on a CPU: 4 MiB of float64, small enough to stay in cache
ACCELERATOR_CHUNK_ELEMENTS = 1 << 27  # on a GPU: 1 GiB of float64, so a step launches a few kernels, not thousands


def row_chunks(rows: int, width: int, device=None):
    """(start, stop) ranges covering range(rows), each of at most max(1, chunk // width) rows, chunk the element
    count of a block on ``device`` (``CHUNK_ELEMENTS`` on the CPU, ``ACCELERATOR_CHUNK_ELEMENTS`` elsewhere)."""
    chunk = CHUNK_ELEMENTS if device is None or torch.device(device).type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    step = max(1, chunk // max(1, width))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def row_sums(weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weights [M, S] summed over each row in dtype: [M] (the same values as ``weights.sum(-1, dtype=dtype)``)."""
    out = torch.empty(weights.shape[0], dtype=dtype, device=weights.device)
    for start, stop in row_chunks(*weights.shape, weights.device):
        torch.sum(weights[start:stop], -1, dtype=dtype, out=out[start:stop])
    return out


class RowFunction:
    """Weights [M, S] (``shape``, on ``device``) given block by block: ``fn(index)`` -> the weights [k, S] of the rows
    index (a slice, or Long[k]), e.g. recomputed from the log-scores instead of kept as an [M, S] float64 tensor."""

    def __init__(self, fn, shape: tuple[int, int], device: torch.device):
        self.fn, self.shape, self.device = fn, tuple(shape), device

    def __call__(self, index) -> torch.Tensor:
        return self.fn(index)


def inverse_cdf(weights, generator: torch.Generator | None, dtype: torch.dtype,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of non-negative weights [M, S] with positive row sums: Long[M] (cumulative sums in dtype).

    rows: None, or Long[K] indices of the rows of weights to draw from (the draws of ``weights[rows]``
    without copying them out): Long[K]. weights may also be a ``RowFunction``, called a block of rows at a time.
    """
    if isinstance(weights, RowFunction):
        rows_of, (total, width), device = weights, weights.shape, weights.device
    else:
        rows_of, (total, width), device = (lambda index: weights[index]), weights.shape, weights.device
    count = total if rows is None else rows.numel()
    v = torch.rand(count, dtype=dtype, device=device, generator=generator)
    y = torch.empty(count, dtype=torch.long, device=device)
    chunks = row_chunks(count, width, device)
    cdf_buffer = torch.empty(chunks[0][1] if chunks else 0, width, dtype=dtype, device=device)
    for start, stop in chunks:
        block = rows_of(slice(start, stop) if rows is None else rows[start:stop])
        cdf = torch.cumsum(block, -1, dtype=dtype, out=cdf_buffer[: stop - start])
        y[start:stop] = torch.searchsorted(cdf, (v[start:stop] * cdf[:, -1])[:, None], right=True).squeeze(1)
    over = y >= width  # v rounded up to the total: the last positive weight
    if bool(over.any()):
        last = rows_of(over.nonzero().squeeze(1) if rows is None else rows[over])
        y[over] = width - 1 - (last > 0).flip(-1).int().argmax(-1)
    return y
