"""Guidance as combinators of score functions: classifier-free and classifier guidance."""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import Tensor

from ._common import ScoreFn, call_model, expand_time

__all__ = ["classifier_free_guidance", "classifier_guidance"]

LogProbFn = Callable[[Tensor, Tensor], Tensor]
"""A classifier of noisy data ``(x [B, *event], t [B]) -> log p_t(c | x) [B]``, differentiable in x."""


def classifier_free_guidance(cond_fn: ScoreFn, uncond_fn: ScoreFn, guidance_scale: float) -> ScoreFn:
    """Guided score ``s_u + guidance_scale (s_c - s_u)`` as a new ``(x, t) -> score`` callable.

    Convention of diffusers: ``guidance_scale = 1`` is the conditional model, ``0`` the
    unconditional one; Ho & Salimans' weight is w = guidance_scale - 1, i.e. (1 + w) s_c - w s_u.
    The combination is linear, so it applies unchanged to eps-, x0-, v- or velocity-predictions.
    """
    scale = float(guidance_scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        cond = call_model(cond_fn, x, t, name="cond_fn")
        uncond = call_model(uncond_fn, x, t, name="uncond_fn")
        return uncond + scale * (cond - uncond)

    return guided


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, weight: float = 1.0) -> ScoreFn:
    """Guided score ``score_fn(x, t) + weight * grad_x log_prob_fn(x, t)`` (Dhariwal & Nichol 2021).

    ``log_prob_fn(x [B, *event], t [B]) -> [B]`` is log p_t(c | x) of a classifier of noisy data for
    the wanted class c (any differentiable torch function; its gradient comes from autograd, also
    under ``torch.no_grad``). With ``weight = 1`` and the exact noisy classifier the result is the
    exact conditional score grad log p_t(x | c) (Bayes), so every sampler then samples p(x0 | c);
    other weights sample no exact law: larger ones sharpen towards the class. Applies to scores: wrap
    an eps-, x0-, v- or velocity-model with ``as_score_fn`` first. The gradient keeps its graph only
    when x itself requires grad (e.g. inside ``log_likelihood``'s divergence).
    """
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise TypeError(f"weight must be a finite non-negative float, got {weight!r}")
    if weight < 0:
        raise ValueError(f"weight must be non-negative (0 is no guidance, 1 the conditional score), got {weight}")
    weight = float(weight)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        score = call_model(score_fn, x, t)
        if weight == 0:
            return score
        with torch.enable_grad():
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            log_prob = log_prob_fn(leaf, expand_time(t, x.shape[0]))
            if not isinstance(log_prob, Tensor) or log_prob.shape != x.shape[:1]:
                got = tuple(log_prob.shape) if isinstance(log_prob, Tensor) else type(log_prob).__name__
                raise ValueError(
                    f"log_prob_fn must return one log-probability per sample, shape [{x.shape[0]}], got {got}"
                )
            if not log_prob.requires_grad:
                raise ValueError("log_prob_fn's output must be differentiable in x (it has no autograd graph)")
            (grad,) = torch.autograd.grad(log_prob.sum(), leaf, create_graph=x.requires_grad)
        return score + weight * grad

    return guided
