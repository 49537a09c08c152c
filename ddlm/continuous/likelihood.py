"""Exact log-likelihood through an ODE flow (instantaneous change of variables).

Along a trajectory of dx/dt = f(x, t), d log p_t(x_t) / dt = -div f(x_t, t), so integrating the
augmented state [x, delta] with d delta/dt = div f from t_min to t_max gives

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + delta(t_max).

For the probability-flow ODE of a score model, f = f(t) x - 1/2 g^2 score. The divergence is exact
(one backward pass per event coordinate) or a Hutchinson estimate v^T (df/dx) v with the probe v
held fixed along each trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._common import (
    PROBES,
    ScoreFn,
    batch_time,
    call_model,
    check_batched,
    check_choice,
    check_positive_int,
    check_time_range,
    probe_like,
    sum_event,
)
from .ode import odeint
from .samplers import probability_flow
from .sde import GaussianSDE

__all__ = ["LogLikelihood", "divergence", "ode_log_likelihood", "log_likelihood", "bits_per_dim"]


@dataclass(frozen=True)
class LogLikelihood:
    """log_prob [B] in nats; stderr [B], the Monte Carlo standard error over Hutchinson probes
    (0 for the exact divergence, nan for a single probe); latent [B, *event], x at t_max (the first
    probe's copy); nfe, the number of drift evaluations (each on B x probes samples)."""

    log_prob: Tensor
    stderr: Tensor
    latent: Tensor
    nfe: int


def _drift_and_divergence(drift_fn, x: Tensor, t: Tensor, probe: Tensor | None) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        drift = call_model(drift_fn, x, t, name="drift_fn")
        if probe is not None:
            (grad,) = torch.autograd.grad((drift * probe).sum(), x)
            div = sum_event(grad * probe)
        else:
            flat = drift.reshape(x.shape[0], -1)
            div = torch.zeros_like(flat[:, 0])
            for i in range(flat.shape[1]):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
                div = div + grad.reshape(x.shape[0], -1)[:, i]
    return drift.detach(), div.detach()


def divergence(fn: ScoreFn, x: Tensor, t, probe: Tensor | None = None) -> Tensor:
    """div_x fn(x, t), [B]: exact without ``probe``, else the Hutchinson estimate v^T (dfn/dx) v."""
    t = batch_time(t, x)
    if probe is not None and probe.shape != x.shape:
        raise ValueError(f"probe must have the shape of x {tuple(x.shape)}, got {tuple(probe.shape)}")
    return _drift_and_divergence(fn, x, t, probe)[1]


def ode_log_likelihood(
    drift_fn: ScoreFn,
    x: Tensor,
    prior_log_prob: Callable[[Tensor], Tensor],
    *,
    t_min: float = 0.0,
    t_max: float = 1.0,
    method: str = "dopri5",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    hutchinson: str | None = None,
    probes: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LogLikelihood:
    """log p_{t_min}(x) for the flow dx/dt = drift_fn(x, t), given log p_{t_max} as ``prior_log_prob``.

    ``x`` is [B, *event]; ``prior_log_prob`` maps [N, *event] -> [N]. ``hutchinson`` = None (exact
    divergence) or a probe kind ("rademacher", "gaussian"); with it, ``probes`` independent probes
    per sample are integrated as replicas and averaged. ``method``/``steps``/``rtol``/``atol`` go to
    ``odeint``. No gradient flows through the result.
    """
    check_batched(x)
    check_time_range(t_min, t_max)
    probes = check_positive_int(probes, "probes")
    if hutchinson is None:
        if probes != 1:
            raise ValueError("probes > 1 needs a Hutchinson estimator: set hutchinson='rademacher' or 'gaussian'")
        probe, state = None, x.detach()
    else:
        check_choice(hutchinson, "hutchinson", PROBES)
        state = x.detach().repeat_interleave(probes, dim=0)
        probe = probe_like(state, hutchinson, generator)

    def rhs(values, t):
        return _drift_and_divergence(drift_fn, values[0], t, probe)

    start = (state, state.new_zeros(state.shape[0]))
    (latent, delta), nfe = odeint(
        rhs, start, t_min, t_max, method=method, steps=steps, rtol=rtol, atol=atol, progress=progress
    )
    prior = prior_log_prob(latent)
    if not isinstance(prior, Tensor) or prior.shape != delta.shape:
        raise ValueError(f"prior_log_prob must map [N, *event] to [N] = [{delta.shape[0]}]")
    log_prob = (prior + delta).reshape(x.shape[0], probes)
    if hutchinson is None:
        stderr = torch.zeros_like(log_prob[:, 0])
    elif probes == 1:
        stderr = torch.full_like(log_prob[:, 0], math.nan)
    else:
        stderr = log_prob.std(1) / math.sqrt(probes)
    latent = latent.reshape(x.shape[0], probes, *x.shape[1:])[:, 0]
    return LogLikelihood(log_prob=log_prob.mean(1), stderr=stderr, latent=latent, nfe=nfe)


def log_likelihood(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    x: Tensor,
    *,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    t_min: float = 1e-5,
    t_max: float = 1.0,
    method: str = "dopri5",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    hutchinson: str | None = None,
    probes: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LogLikelihood:
    """log p_{t_min}(x) of a score model through its probability-flow ODE (Song et al. 2021).

    ``prior_log_prob`` overrides ``sde.prior_log_prob`` as log p_{t_max} (pass the true terminal
    density to remove the prior-mismatch error, which is of order alpha(1) |x|). Other arguments as
    in ``ode_log_likelihood``.
    """
    return ode_log_likelihood(
        probability_flow(score_fn, sde),
        x,
        prior_log_prob if prior_log_prob is not None else sde.prior_log_prob,
        t_min=t_min,
        t_max=t_max,
        method=method,
        steps=steps,
        rtol=rtol,
        atol=atol,
        hutchinson=hutchinson,
        probes=probes,
        generator=generator,
        progress=progress,
    )


def bits_per_dim(log_prob: Tensor, num_dims: int, offset: float = 0.0) -> Tensor:
    """-log_prob / (num_dims ln 2) + offset, [B].

    ``offset`` converts units explicitly: for 8-bit data dequantised and mapped to [-1, 1] by
    x = 2 (k + u) / 256 - 1 it is log2(128) = 7 bits, giving bits per dim of the discrete data.
    """
    num_dims = check_positive_int(num_dims, "num_dims")
    return -log_prob / (num_dims * math.log(2)) + offset
