"""Model parametrisations and Tweedie's formula for x_t = alpha x0 + sigma eps.

A network may predict any of

    score     grad log p_t(x_t)          = -eps / sigma
    eps       the added noise            = (x_t - alpha x0) / sigma
    x0        the clean data (denoiser)  = E[x0 | x_t] at the optimum
    v         alpha eps - sigma x0       (Salimans & Ho 2022; any alpha, sigma)
    velocity  alpha' x0 + sigma' eps     (flow matching; the probability-flow ODE velocity)

Given x_t each one fixes the pair (x0, eps), so every conversion is exact and linear in the
output. Tweedie: E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha.
"""

from __future__ import annotations

from torch import Tensor

from ._common import ScoreFn, batch_time, check_choice, per_sample
from .sde import GaussianSDE

__all__ = ["PREDICTIONS", "convert", "tweedie", "as_score_fn"]

PREDICTIONS = ("score", "eps", "x0", "v", "velocity")


def _to_x0_eps(kind, out, x, alpha, sigma, d_alpha, d_sigma):
    if kind == "score":
        eps = -sigma * out
        return (x - sigma * eps) / alpha, eps
    if kind == "eps":
        return (x - sigma * out) / alpha, out
    if kind == "x0":
        return out, (x - alpha * out) / sigma
    if kind == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
    det = alpha * d_sigma - sigma * d_alpha  # velocity
    return (d_sigma * x - sigma * out) / det, (alpha * out - d_alpha * x) / det


def _from_x0_eps(kind, x0, eps, alpha, sigma, d_alpha, d_sigma):
    if kind == "score":
        return -eps / sigma
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    return d_alpha * x0 + d_sigma * eps  # velocity


def convert(output: Tensor, x_t: Tensor, t, sde: GaussianSDE, source: str, target: str) -> Tensor:
    """Convert a prediction of kind ``source`` at (x_t, t) into kind ``target`` (see PREDICTIONS).

    ``output`` and ``x_t`` are [B, *event]; ``t`` is 0-d or [B]. Returns [B, *event].
    """
    check_choice(source, "source", PREDICTIONS)
    check_choice(target, "target", PREDICTIONS)
    t = batch_time(t, x_t)
    if output.shape != x_t.shape:
        raise ValueError(f"output must have the shape of x_t {tuple(x_t.shape)}, got {tuple(output.shape)}")
    if source == target:
        return output
    alpha = per_sample(sde.alpha(t), x_t)
    sigma = per_sample(sde.sigma(t), x_t)
    d_alpha = d_sigma = None
    if "velocity" in (source, target):
        d_alpha = per_sample(sde.d_alpha(t), x_t)
        d_sigma = per_sample(sde.d_sigma(t), x_t)
    x0, eps = _to_x0_eps(source, output, x_t, alpha, sigma, d_alpha, d_sigma)
    return _from_x0_eps(target, x0, eps, alpha, sigma, d_alpha, d_sigma)


def tweedie(x_t: Tensor, score: Tensor, t, sde: GaussianSDE) -> Tensor:
    """Posterior mean E[x0 | x_t] = (x_t + sigma^2 score) / alpha, shaped like x_t."""
    return convert(score, x_t, t, sde, "score", "x0")


def as_score_fn(model: ScoreFn, sde: GaussianSDE, prediction: str) -> ScoreFn:
    """Wrap ``model(x, t)`` that predicts ``prediction`` into a score function ``(x, t) -> score``."""
    check_choice(prediction, "prediction", PREDICTIONS)
    if prediction == "score":
        return model

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        return convert(model(x, t), x, t, sde, prediction, "score")

    return score_fn
