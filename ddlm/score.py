"""The score-function contract shared by losses, samplers and the likelihood bound.

A ``score_fn(x_t, sigma_bar) -> log_score`` takes tokens Long[B, L] and total noise sigma_bar [B]
and returns log-ratios [B, L, S], ``log s[b, i, y] ~ log p_t(x_t with x_i = y) / p_t(x_t)``. A
model or any callable qualifies.
"""

from __future__ import annotations

from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteScoreError(ValueError):
    """A score function returned NaN or +inf log-scores."""


def evaluate_score(score_fn: ScoreFn, x_t: torch.Tensor, sigma_bar: torch.Tensor, num_states: int) -> torch.Tensor:
    """Call score_fn and check its output: shape [B, L, num_states], no NaN and no +inf.

    ``-inf`` is allowed (a ratio of exactly 0, as exact oracles produce).
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x_t [B, L], sigma_bar [B]) -> [B, L, S], got {type(score_fn).__name__}")
    log_score = score_fn(x_t, sigma_bar)
    expected = (*x_t.shape, num_states)
    if not isinstance(log_score, torch.Tensor) or tuple(log_score.shape) != expected:
        got = list(log_score.shape) if isinstance(log_score, torch.Tensor) else type(log_score).__name__
        raise ValueError(f"score_fn must return log-scores of shape {list(expected)}, got {got}")
    if not log_score.is_floating_point():
        raise TypeError(f"score_fn must return floating log-scores, got dtype {log_score.dtype}")
    largest = log_score.detach().amax() if log_score.numel() else log_score.new_zeros(())  # one pass; NaN propagates
    if bool(torch.isnan(largest)) or bool(torch.isposinf(largest)):
        raise NonFiniteScoreError("score_fn returned NaN or +inf log-scores; the ratio network has diverged or is fed bad input")
    return log_score
