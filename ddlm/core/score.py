"""The score-function contract shared by losses, samplers and the likelihood bound.

A ``score_fn(x_t, sigma_bar) -> log_score`` takes tokens Long[B, L] and total noise sigma_bar [B]
and returns log-ratios [B, L, S], ``log s[b, i, y] ~ log p_t(x_t with x_i = y) / p_t(x_t)``. A
model or any callable qualifies.

Row-restricted scores: a score function that sets the attribute ``accepts_positions = True``
also takes ``score_fn(x_t, sigma_bar, positions=P)`` with P a Bool[B, L] (or Long[R] of flat
indices b * L + i) and returns only those rows, [R, S] in the order of ``x_t[P]`` (of the
indices). Its rows must equal the corresponding rows of the full output. ``DDLMForDiffusion``
and ``DiffusionPipeline.score_fn`` declare it (the network runs its output head only on those
rows); for any other callable ``evaluate_score`` computes the full output and gathers the rows.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteScoreError(ValueError):
    """A score function returned NaN or +inf log-scores."""


def accepts_positions(score_fn) -> bool:
    """Whether ``score_fn(x_t, sigma_bar, positions=...)`` returns only the requested rows (see the module docstring)."""
    return getattr(score_fn, "accepts_positions", False) is True


def row_index(positions: torch.Tensor, shape) -> torch.Tensor:
    """Flat row indices Long[R] into a [B, L] batch from positions Bool[B, L] or Long[R] (b * L + i), checked."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a Bool[B, L] or Long[R] tensor, got {type(positions).__name__}")
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != tuple(shape):
            raise ValueError(f"positions must be a Bool tensor of shape {list(shape)}, got {list(positions.shape)}")
        return positions.reshape(-1).nonzero().squeeze(1)
    if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dim() != 1:
        raise ValueError(f"positions must be Bool{list(shape)} or a 1-D Long tensor of flat indices, got {positions.dtype} {list(positions.shape)}")
    size = math.prod(shape)
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= size):
        raise ValueError(f"flat positions must lie in [0, {size}), got [{int(positions.min())}, {int(positions.max())}]")
    return positions.long()


def evaluate_score(
    score_fn: ScoreFn, x_t: torch.Tensor, sigma_bar: torch.Tensor, num_states: int, positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Call score_fn and check its output: shape [B, L, num_states], no NaN and no +inf.

    ``-inf`` is allowed (a ratio of exactly 0, as exact oracles produce). With ``positions``
    (Bool[B, L] or flat Long[R]) only those rows are returned, [R, num_states]: asked of a score
    function that accepts positions, else gathered from its full output; the checks apply to
    the rows returned.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x_t [B, L], sigma_bar [B]) -> [B, L, S], got {type(score_fn).__name__}")
    if positions is not None and accepts_positions(score_fn):
        index = row_index(positions, x_t.shape)
        log_score = score_fn(x_t, sigma_bar, positions=positions)
        expected = (index.numel(), num_states)
    else:
        log_score = score_fn(x_t, sigma_bar)
        expected = (*x_t.shape, num_states)
        if positions is not None and isinstance(log_score, torch.Tensor) and tuple(log_score.shape) == expected:
            log_score = log_score.reshape(-1, num_states)[row_index(positions, x_t.shape)]
            expected = (log_score.shape[0], num_states)
    if not isinstance(log_score, torch.Tensor) or tuple(log_score.shape) != expected:
        got = list(log_score.shape) if isinstance(log_score, torch.Tensor) else type(log_score).__name__
        raise ValueError(f"score_fn must return log-scores of shape {list(expected)}, got {got}")
    if not log_score.is_floating_point():
        raise TypeError(f"score_fn must return floating log-scores, got dtype {log_score.dtype}")
    largest = log_score.detach().amax() if log_score.numel() else log_score.new_zeros(())  # one pass; NaN propagates
    if bool(torch.isnan(largest)) or bool(torch.isposinf(largest)):
        raise NonFiniteScoreError("score_fn returned NaN or +inf log-scores; the ratio network has diverged or is fed bad input")
    return log_score
