"""Categorical draws from unnormalised weights, float64 by default (see the sampling conventions)."""

from __future__ import annotations

import torch


def inverse_cdf(weights: torch.Tensor, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    """One draw per row of non-negative weights [M, S] with positive row sums: Long[M] (cumulative sums in dtype)."""
    cdf = torch.cumsum(weights, -1, dtype=dtype)
    v = torch.rand(weights.shape[:-1], dtype=dtype, device=weights.device, generator=generator) * cdf[:, -1]
    y = torch.searchsorted(cdf, v[:, None], right=True).squeeze(1)
    over = y >= weights.shape[-1]  # v rounded up to the total: the last positive weight
    if bool(over.any()):
        y[over] = weights.shape[-1] - 1 - (weights[over] > 0).flip(-1).int().argmax(-1)
    return y
