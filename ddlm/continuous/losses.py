"""Training losses for linear Gaussian SDEs. Each returns one value per sample, [B] (nats where
applicable), summed over event dims; take ``.mean()`` for a scalar.

Each loss takes the model in the parametrisation it trains: score (DSM, ISM, SSM), eps (DDPM) or
velocity (CFM); ``as_score_fn`` turns any of them into a score function for the samplers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from ._common import (
    PROBES,
    ScoreFn,
    batch_time,
    call_model,
    check_batched,
    check_choice,
    check_positive_int,
    check_time_range,
    event_size,
    expand_time,
    per_sample,
    probe_like,
    sum_event,
    uniform_time,
)
from .sde import GaussianSDE

__all__ = [
    "DSM_WEIGHTINGS",
    "dsm_loss",
    "esm_loss",
    "ism_loss",
    "ssm_loss",
    "ddpm_loss",
    "ddpm_elbo",
    "ELBOTerms",
    "cfm_loss",
]

DSM_WEIGHTINGS = ("sigma2", "likelihood", "none")


def _times(t, x0: Tensor, t_min: float, generator) -> Tensor:
    """Given t validated to [B], or t ~ U[t_min, 1] per sample."""
    check_batched(x0, "x0")
    if t is None:
        check_time_range(t_min, 1.0)
        return uniform_time(x0.shape[0], t_min, 1.0, generator, x0)
    return expand_time(batch_time(t, x0), x0.shape[0])


def _weight(weighting, sde: GaussianSDE, t: Tensor) -> Tensor:
    """lambda(t) [B] of a DSM weighting name or callable (see ``dsm_loss``)."""
    if weighting == "sigma2":
        return sde.sigma(t) ** 2
    if weighting == "likelihood":
        return sde.diffusion_sq(t)
    if weighting == "none":
        return torch.ones_like(t)
    return weighting(t)


def _perturbed_score(score_fn: ScoreFn, sde: GaussianSDE, x0: Tensor, t, weighting, t_min: float, noise, generator):
    """What DSM and ESM share: the weighting checked, t drawn (or given), x_t = alpha x0 + sigma eps and the
    model's score there -> (t [B], x_t, eps, score)."""
    if not callable(weighting):
        check_choice(weighting, "weighting", DSM_WEIGHTINGS)
    t = _times(t, x0, t_min, generator)
    x_t, noise = sde.perturb(x0, t, noise=noise, generator=generator)
    return t, x_t, noise, call_model(score_fn, x_t, t)


def dsm_loss(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    x0: Tensor,
    *,
    t=None,
    weighting: str | Callable[[Tensor], Tensor] = "sigma2",
    t_min: float = 1e-5,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoising score matching (Vincent 2011; Song et al. 2021), [B].

    loss = 1/2 lambda(t) || score_fn(x_t, t) + eps / sigma(t) ||^2 with x_t = alpha x0 + sigma eps and
    t ~ U[t_min, 1] unless ``t`` (0-d or [B]) is given. ``weighting``: "sigma2" (lambda = sigma^2,
    the eps-prediction loss 1/2 ||sigma s + eps||^2), "likelihood" (lambda = g^2, Song, Durkan,
    Murray & Ermon 2021), "none" (lambda = 1), or a callable t [B] -> lambda [B]. With lambda = 1 and
    a fixed t it equals ``ism_loss`` on p_t plus the constant D / (2 sigma^2) in expectation.
    """
    t, x_t, noise, score = _perturbed_score(score_fn, sde, x0, t, weighting, t_min, noise, generator)
    sigma = per_sample(sde.sigma(t), x0)
    if weighting == "sigma2":
        return 0.5 * sum_event((sigma * score + noise) ** 2)
    return 0.5 * _weight(weighting, sde, t) * sum_event((score + noise / sigma) ** 2)


def esm_loss(
    score_fn: ScoreFn,
    target_score: ScoreFn,
    sde: GaussianSDE,
    x0: Tensor,
    *,
    t=None,
    weighting: str | Callable[[Tensor], Tensor] = "sigma2",
    t_min: float = 1e-5,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Explicit score matching against a known score, [B]: 1/2 lambda(t) || score_fn(x_t, t) - s*(x_t, t) ||^2.

    ``target_score(x_t, t)`` is the true score grad log p_t (e.g. ``GaussianMixture.score_fn(sde)``),
    treated as a constant (detached). x_t, t and ``weighting`` are drawn and read exactly as in
    ``dsm_loss``, so with the same ``t`` and ``noise`` E[dsm_loss - esm_loss] is a constant independent
    of score_fn: E[dsm_loss(s*)] = 1/2 E[lambda (D / sigma^2 - ||s*||^2)].
    """
    t, x_t, _, score = _perturbed_score(score_fn, sde, x0, t, weighting, t_min, noise, generator)
    target = call_model(target_score, x_t, t, name="target_score").detach()
    return 0.5 * _weight(weighting, sde, t) * sum_event((score - target) ** 2)


def _replicate(x: Tensor, t: Tensor, copies: int) -> tuple[Tensor, Tensor]:
    """[B, *event], [B] -> [B * copies, *event], [B * copies] (copies of a sample are adjacent)."""
    return x.repeat_interleave(copies, dim=0), t.repeat_interleave(copies, dim=0)


def ism_loss(score_fn: ScoreFn, x: Tensor, t) -> Tensor:
    """Implicit score matching (Hyvarinen 2005) on samples x of p_t: 1/2 ||s||^2 + tr(ds/dx), [B].

    The trace is exact, one backward pass per event coordinate: meant for small D. The graph is
    kept (create_graph), so the loss can be minimised.
    """
    t = expand_time(batch_time(t, x), x.shape[0])
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        score = call_model(score_fn, x, t)
        flat = score.reshape(x.shape[0], -1)
        trace = torch.zeros_like(flat[:, 0])
        for i in range(flat.shape[1]):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True)
            trace = trace + grad.reshape(x.shape[0], -1)[:, i]
        return 0.5 * (flat**2).sum(1) + trace


def ssm_loss(
    score_fn: ScoreFn,
    x: Tensor,
    t,
    *,
    probes: int = 1,
    probe: str = "rademacher",
    variance_reduced: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019) on samples x of p_t, [B].

    Averages v^T (ds/dx) v + 1/2 ||s||^2 (``variance_reduced``, SSM-VR) or + 1/2 (v^T s)^2 over
    ``probes`` Rademacher or Gaussian probes v with E[v v^T] = I; either form is unbiased for
    ``ism_loss``. One extra backward pass per call; the graph is kept for training.
    """
    check_choice(probe, "probe", PROBES)
    probes = check_positive_int(probes, "probes")
    t = expand_time(batch_time(t, x), x.shape[0])
    batch = x.shape[0]
    with torch.enable_grad():
        xr, tr = _replicate(x.detach(), t, probes)
        xr.requires_grad_(True)
        v = probe_like(xr, probe, generator)
        score = call_model(score_fn, xr, tr)
        projected = sum_event(score * v)
        (grad,) = torch.autograd.grad(projected.sum(), xr, create_graph=True)
        quadratic = sum_event(grad * v)
        first = 0.5 * sum_event(score**2) if variance_reduced else 0.5 * projected**2
        return (first + quadratic).reshape(batch, probes).mean(1)


def ddpm_loss(
    eps_fn: ScoreFn,
    sde: GaussianSDE,
    x0: Tensor,
    *,
    steps: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ho et al.'s simplified loss || eps - eps_fn(x_t, t) ||^2 with t = i / steps, i ~ U{1..steps}, [B]."""
    check_batched(x0, "x0")
    steps = check_positive_int(steps, "steps")
    index = torch.randint(1, steps + 1, (x0.shape[0],), generator=generator, device=x0.device)
    t = index.to(x0.dtype) / steps
    x_t, noise = sde.perturb(x0, t, generator=generator)
    return sum_event((noise - call_model(eps_fn, x_t, t, name="eps_fn")) ** 2)


@dataclass(frozen=True)
class ELBOTerms:
    """Terms of the discrete-time variational bound -log p(x0) <= total, each in nats per sample.

    prior: [B] KL(q(x_1 | x0) || prior). transitions: [B, steps - 1], column i - 2 is
    E KL(q(x_{t_{i-1}} | x_{t_i}, x0) || p(x_{t_{i-1}} | x_{t_i})) for i = 2..steps. decoder: [B]
    E[-log p(x0 | x_{t_1})]. Each expectation is a one-sample Monte Carlo estimate.
    """

    prior: Tensor
    transitions: Tensor
    decoder: Tensor

    @property
    def total(self) -> Tensor:
        """The bound on -log p(x0), [B]."""
        return self.prior + self.transitions.sum(1) + self.decoder


# One piece: the transitions, the decoder and the prior share the grid, the coefficient closures and the
# noise draws in this order (the order fixes the generator's stream, so a seed gives the same terms).
def ddpm_elbo(
    eps_fn: ScoreFn,
    sde: GaussianSDE,
    x0: Tensor,
    *,
    steps: int = 1000,
    variance: str | Callable[[Tensor, Tensor], Tensor] = "fixed_small",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ELBOTerms:
    """The DDPM variational bound of an eps-model on the grid t_i = i / steps (Ho et al. 2020).

    The reverse kernel p(x_s | x_t) = N(alpha_s x0_hat + sigma_s sqrt(1 - tau) eps_hat, var) with
    tau = 1 - (alpha_t sigma_s / (alpha_s sigma_t))^2 has the mean of the true posterior
    q(x_s | x_t, x0 = x0_hat); ``variance`` is "fixed_small" (tau sigma_s^2, the posterior variance),
    "fixed_large" (tau sigma_t^2, the forward step variance) or a callable (t, s) -> var (0-d or [B]).
    The decoder p(x0 | x_{t_1}) = N(x0_hat, var(t_1, 0)); "fixed_small" uses the posterior variance of
    the second step there (Ho et al.'s clipping), so it needs steps >= 2. With fixed variance the
    KL of a step is alpha_s^2 tau^2 sigma_t^2 / (2 alpha_t^2 var) ||eps - eps_hat||^2.
    """
    check_batched(x0, "x0")
    steps = check_positive_int(steps, "steps")
    if not callable(variance):
        check_choice(variance, "variance", ("fixed_small", "fixed_large"))
        if variance == "fixed_small" and steps < 2:
            raise ValueError("variance='fixed_small' needs steps >= 2 (its decoder uses the second step)")
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=x0.dtype, device=x0.device)
    dim = event_size(x0)

    def coefficients(t, s):
        alpha_t, sigma_t, alpha_s, sigma_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
        tau = (1 - (alpha_t * sigma_s / (alpha_s * sigma_t)) ** 2).clamp_min(0)
        return alpha_t, sigma_t, alpha_s, sigma_s, tau

    def model_variance(t, s):
        if callable(variance):
            return torch.as_tensor(variance(t, s), dtype=x0.dtype, device=x0.device)
        _, sigma_t, _, sigma_s, tau = coefficients(t, s)
        return tau * (sigma_s**2 if variance == "fixed_small" else sigma_t**2)

    def noised(t):
        x_t, noise = sde.perturb(x0, t, generator=generator)
        return x_t, noise, call_model(eps_fn, x_t, t, name="eps_fn")

    transitions = []
    for i in tqdm(range(2, steps + 1), disable=not progress, desc="ELBO"):
        t, s = grid[i], grid[i - 1]
        alpha_t, sigma_t, alpha_s, sigma_s, tau = coefficients(t, s)
        _, noise, eps_hat = noised(t)
        q_var = tau * sigma_s**2
        p_var = model_variance(t, s)
        ratio = q_var / p_var
        mean_sq = (alpha_s * tau * sigma_t / alpha_t) ** 2 * sum_event((noise - eps_hat) ** 2)
        transitions.append(0.5 * (dim * (ratio - 1 - torch.log(ratio)) + mean_sq / p_var))
    transitions = torch.stack(transitions, 1) if transitions else x0.new_zeros(x0.shape[0], 0)

    t1 = grid[1]
    alpha_1, sigma_1 = sde.alpha(t1), sde.sigma(t1)
    x_1, _, eps_hat = noised(t1)
    x0_hat = (x_1 - sigma_1 * eps_hat) / alpha_1
    if variance == "fixed_small":
        decoder_var = model_variance(grid[2], grid[1])
    else:
        decoder_var = model_variance(t1, grid[0])
    decoder_var = per_sample(decoder_var, x0)
    decoder = 0.5 * sum_event((x0 - x0_hat) ** 2 / decoder_var + torch.log(2 * math.pi * decoder_var).expand_as(x0))

    alpha_end, sigma_end = sde.alpha(grid[-1]), sde.sigma(grid[-1])
    prior_var = sde.prior_std**2
    ratio = sigma_end**2 / prior_var
    prior = 0.5 * (dim * (ratio - 1 - torch.log(ratio)) + alpha_end**2 * sum_event(x0**2) / prior_var)
    return ELBOTerms(prior=prior, transitions=transitions, decoder=decoder)


def cfm_loss(
    velocity_fn: ScoreFn,
    sde: GaussianSDE,
    x0: Tensor,
    *,
    t=None,
    t_min: float = 1e-5,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conditional flow matching (Lipman et al. 2023) on the path of ``sde``, [B].

    loss = || velocity_fn(x_t, t) - (alpha'(t) x0 + sigma'(t) eps) ||^2, t ~ U[t_min, 1] unless given.
    Its minimiser is the probability-flow velocity; with ``RectifiedFlow`` the target is eps - x0.
    Time runs from data (0) to noise (1): torchcfm / flow_matching time is 1 - t.
    """
    t = _times(t, x0, t_min, generator)
    x_t, noise = sde.perturb(x0, t, noise=noise, generator=generator)
    target = per_sample(sde.d_alpha(t), x0) * x0 + per_sample(sde.d_sigma(t), x0) * noise
    return sum_event((call_model(velocity_fn, x_t, t, name="velocity_fn") - target) ** 2)
