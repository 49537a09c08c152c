"""Samplers for linear Gaussian SDEs, driven by a score function ``score_fn(x [B, *event], t [B])``.

All samplers walk a descending time grid with a stateless step ``x <- step(x, t, s)`` (t > s) and
start from ``sde.prior_sample`` unless ``x_init`` is given. ``sample_sde``, ``sample_ddpm`` and
``sample_ddim`` take a ``project`` hook applied at every time they reach (``replacement_inpainting``).

- ``sample_sde``: reverse-SDE Euler-Maruyama; with ``corrector_steps > 0`` the predictor-corrector
  sampler of Song et al. (2021) with a Langevin corrector whose step is set by a signal-to-noise ratio
  (``step_rule``: ddlm's "expected" or score_sde's rule).
- ``sample_ode``: the probability-flow ODE (Euler, Heun, RK4 or adaptive Dormand-Prince).
- ``sample_ddpm`` / ``sample_ddim``: the two-time ancestral step through the exact posterior
  q(x_s | x_t, x0_hat) (DDPM with the "fixed_small" variance at eta = 1, DDIM at eta = 0).
- ``annealed_langevin``: SMLD / NCSN annealed Langevin dynamics over decreasing noise levels.
- ``langevin_dynamics``: Langevin MCMC on p_t at one fixed time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm import tqdm

from ._common import (
    ProjectFn,
    ScoreFn,
    batch_time,
    call_model,
    check_choice,
    check_positive_int,
    check_shape,
    check_time_range,
    event_size,
    randn_like,
    sum_event,
)
from .ode import odeint
from .parametrization import tweedie
from .sde import GaussianSDE

__all__ = [
    "LANGEVIN_STEP_RULES",
    "time_grid",
    "probability_flow",
    "sample_sde",
    "sample_ode",
    "sample_ddpm",
    "sample_ddim",
    "annealed_langevin",
    "langevin_dynamics",
]


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 1e-3, dtype=None, device=None) -> Tensor:
    """Uniform descending grid t_max = t_0 > ... > t_steps = t_min, shape [steps + 1]."""
    steps = check_positive_int(steps, "steps")
    check_time_range(t_min, t_max)
    return torch.linspace(t_max, t_min, steps + 1, dtype=dtype or torch.get_default_dtype(), device=device)


def probability_flow(score_fn: ScoreFn, sde: GaussianSDE):
    """The probability-flow velocity ``(x, t) -> f x - 1/2 g^2 score(x, t)`` as an ODE right-hand side."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return sde.probability_flow_drift(x, t, call_model(score_fn, x, t))

    return velocity


def _start(sde, shape, x_init, generator, dtype, device) -> Tensor:
    if x_init is not None:
        if not isinstance(x_init, Tensor) or x_init.ndim < 1:
            raise TypeError("x_init must be a tensor shaped [B, *event]")
        if shape is not None and tuple(x_init.shape) != check_shape(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)} but shape is {tuple(shape)}")
        return x_init.clone()
    return sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)


def _walk(step, x: Tensor, grid: Tensor, progress: bool, desc: str) -> Tensor:
    for i in tqdm(range(len(grid) - 1), disable=not progress, desc=desc):
        x = step(x, grid[i], grid[i + 1])
    return x


LANGEVIN_STEP_RULES = ("expected", "score_sde")


def _langevin_step(score_fn, x, t, step_size, snr, generator, rule="expected", retention=1.0):
    """One unadjusted Langevin step x + eps s + sqrt(2 eps) z on p_t.

    With ``snr`` the step is set by the signal-to-noise rule of Song et al. (2021), with the score
    norm averaged over the batch (every sample takes the same step):

    - ``rule="expected"``: eps = 2 (snr sqrt(D) / mean_b ||s_b||)^2, the noise norm at its expected
      size sqrt(D), independent of the noise the step is about to add;
    - ``rule="score_sde"``: eps = 2 retention (snr mean_b ||z_b|| / mean_b ||s_b||)^2, score_sde's
      code, with the norm of the noise z drawn for this step and its factor alpha_i (``retention``).
    """
    score = call_model(score_fn, x, t)
    noise = randn_like(x, generator)
    if step_size is None:
        score_norm = sum_event(score**2).sqrt().mean()
        if rule == "score_sde":
            noise_norm = sum_event(noise**2).sqrt().mean()
            step_size = 2 * retention * (snr * noise_norm / score_norm) ** 2
        else:
            step_size = 2 * (snr * math.sqrt(event_size(x)) / score_norm) ** 2
    return x + step_size * score + torch.sqrt(2 * torch.as_tensor(step_size, dtype=x.dtype)) * noise


def _project(project, x: Tensor, t: Tensor) -> Tensor:
    """Apply an optional projection ``project(x, t [B])`` (e.g. ``replacement_inpainting``)."""
    return x if project is None else call_model(project, x, t, name="project")


def sample_sde(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    shape,
    *,
    steps: int = 1000,
    corrector_steps: int = 0,
    snr: float = 0.16,
    step_rule: str = "expected",
    t_max: float = 1.0,
    t_min: float = 1e-3,
    denoise: bool = True,
    project: ProjectFn | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    progress: bool = False,
) -> Tensor:
    """Reverse-SDE Euler-Maruyama from t_max to t_min; predictor-corrector if corrector_steps > 0.

    Each step from t to s = t - h: ``corrector_steps`` Langevin steps on p_t, then
    x <- x - [f x - g^2 score] h + g sqrt(h) z. The corrector's step follows ``step_rule``:
    "expected" eps = 2 (snr sqrt(D) / mean ||score||)^2, or "score_sde" eps = 2 alpha_i (snr mean ||z|| /
    mean ||score||)^2 with alpha_i = alpha(t)^2 / alpha(s)^2 (the 1 - beta_i of the step; 1 on VE
    paths), as in score_sde's code. ``denoise`` applies Tweedie's x0 estimate at t_min. ``project``
    (e.g. ``replacement_inpainting``) maps ``(x, t [B]) -> x`` at the start, after every corrector and
    predictor step, and on the denoised output with t = 0. Returns [B, *event].
    """
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    check_choice(step_rule, "step_rule", LANGEVIN_STEP_RULES)
    grid = time_grid(steps, t_max, t_min, dtype=dtype, device=device)
    x = _start(sde, shape, x_init, generator, grid.dtype, device)
    grid = grid.to(dtype=x.dtype, device=x.device)
    x = _project(project, x, grid[0])

    def step(x, t, s):
        retention = (sde.alpha(t) / sde.alpha(s)) ** 2 if step_rule == "score_sde" else 1.0
        for _ in range(corrector_steps):
            x = _project(project, _langevin_step(score_fn, x, t, None, snr, generator, step_rule, retention), t)
        h = t - s
        drift = sde.reverse_drift(x, t, call_model(score_fn, x, t))
        noise = randn_like(x, generator)
        return _project(project, x - drift * h + sde.diffusion(t) * h.sqrt() * noise, s)

    x = _walk(step, x, grid, progress, "reverse SDE")
    if not denoise:
        return x
    return _project(project, _denoise(score_fn, sde, x, grid[-1]), torch.zeros_like(grid[-1]))


def _denoise(score_fn, sde, x, t):
    return tweedie(x, call_model(score_fn, x, t), t, sde)


def sample_ode(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    shape,
    *,
    method: str = "heun",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_max: float = 1.0,
    t_min: float = 1e-3,
    denoise: bool = True,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    progress: bool = False,
) -> Tensor:
    """Integrate the probability-flow ODE from t_max down to t_min; returns [B, *event].

    ``method`` is one of ``ODE_METHODS``: "euler", "heun", "rk4" on ``steps`` uniform steps, or
    "dopri5" (adaptive, ``rtol``/``atol``). Only the prior draw is random. ``denoise`` applies
    Tweedie's x0 estimate at t_min.
    """
    check_time_range(t_min, t_max)
    x = _start(sde, shape, x_init, generator, dtype or torch.get_default_dtype(), device)
    x, _ = odeint(
        probability_flow(score_fn, sde), x, t_max, t_min,
        method=method, steps=steps, rtol=rtol, atol=atol, progress=progress,
    )
    t_end = torch.tensor(t_min, dtype=x.dtype, device=x.device)
    return _denoise(score_fn, sde, x, t_end) if denoise else x


def _posterior_step(score_fn, sde, x, t, s, eta, generator):
    """x_s = alpha_s x0 + sqrt(sigma_s^2 - v) eps + sqrt(v) z with v = eta^2 tau sigma_s^2,
    tau = 1 - (alpha_t sigma_s / (alpha_s sigma_t))^2 (v = variance of q(x_s | x_t, x0) at eta = 1)."""
    score = call_model(score_fn, x, t)
    sigma_t, alpha_t = sde.sigma(t), sde.alpha(t)
    sigma_s, alpha_s = sde.sigma(s), sde.alpha(s)
    eps = -sigma_t * score
    x0 = (x - sigma_t * eps) / alpha_t
    tau = (1 - (alpha_t * sigma_s / (alpha_s * sigma_t)) ** 2).clamp_min(0)
    var = eta**2 * tau * sigma_s**2
    out = alpha_s * x0 + (sigma_s**2 - var).clamp_min(0).sqrt() * eps
    if eta > 0:
        out = out + var.sqrt() * randn_like(x, generator)
    return out


def _sample_posterior(score_fn, sde, shape, steps, eta, t_max, project, x_init, generator, dtype, device, progress):
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    grid = time_grid(steps, t_max, 0.0, dtype=dtype)
    x = _start(sde, shape, x_init, generator, grid.dtype, device)
    grid = grid.to(dtype=x.dtype, device=x.device)
    x = _project(project, x, grid[0])

    def step(x, t, s):
        return _project(project, _posterior_step(score_fn, sde, x, t, s, eta, generator), s)

    return _walk(step, x, grid, progress, "DDPM" if eta == 1 else f"DDIM(eta={eta:g})")


def sample_ddpm(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    shape,
    *,
    steps: int = 1000,
    t_max: float = 1.0,
    project: ProjectFn | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    progress: bool = False,
) -> Tensor:
    """DDPM ancestral sampling on the uniform grid t_i = t_max i / steps, ending exactly at t = 0.

    Each step draws from q(x_s | x_t, x0_hat) with x0_hat from Tweedie (Ho et al.'s "fixed_small"
    variance); on the VP SDE this is the DDPM sampler with beta_i = 1 - alpha(t_i)^2 / alpha(t_{i-1})^2.
    The last step returns x0_hat without noise. ``project`` maps ``(x, t [B]) -> x`` at the start and
    after every step (see ``sample_sde``; the last step ends at t = 0). Returns [B, *event].
    """
    return _sample_posterior(
        score_fn, sde, shape, steps, 1.0, t_max, project, x_init, generator, dtype, device, progress
    )


def sample_ddim(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    shape,
    *,
    steps: int = 50,
    eta: float = 0.0,
    t_max: float = 1.0,
    project: ProjectFn | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021): the ancestral step with noise variance eta^2 times DDPM's.

    eta = 0 is deterministic (after the prior draw); eta = 1 equals ``sample_ddpm``. ``project`` as in
    ``sample_ddpm``. Returns [B, *event].
    """
    return _sample_posterior(
        score_fn, sde, shape, steps, eta, t_max, project, x_init, generator, dtype, device, progress
    )


def langevin_dynamics(
    score_fn: ScoreFn,
    x: Tensor,
    t,
    *,
    steps: int,
    step_size: float | None = None,
    snr: float | None = None,
    step_rule: str = "expected",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Unadjusted Langevin x <- x + eps score(x, t) + sqrt(2 eps) z on p_t at a fixed time t.

    Give exactly one of ``step_size`` (a fixed eps) or ``snr``, the predictor-corrector rule
    (D = event size, norms per sample, averaged over the batch): ``step_rule="expected"``
    eps = 2 (snr sqrt(D) / mean_b ||score_b||)^2, or ``"score_sde"`` eps = 2 (snr mean_b ||z_b|| /
    mean_b ||score_b||)^2 with the noise z of the step (alpha_i = 1: there is no predictor step here).
    Langevin mixes slowly between separated modes, so it does not recover mode weights on its own.
    """
    if (step_size is None) == (snr is None):
        raise ValueError("give exactly one of step_size and snr")
    value = step_size if step_size is not None else snr
    if not value > 0:
        raise ValueError(f"{'step_size' if step_size is not None else 'snr'} must be positive, got {value}")
    check_choice(step_rule, "step_rule", LANGEVIN_STEP_RULES)
    t = batch_time(t, x)
    steps = check_positive_int(steps, "steps")
    for _ in tqdm(range(steps), disable=not progress, desc="Langevin"):
        x = _langevin_step(score_fn, x, t, step_size, snr, generator, step_rule)
    return x


def annealed_langevin(
    score_fn: ScoreFn,
    sde: GaussianSDE,
    shape,
    *,
    levels: int = 10,
    steps_per_level: int = 100,
    step_lr: float = 2e-5,
    t_max: float = 1.0,
    t_min: float = 0.01,
    denoise: bool = True,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    progress: bool = False,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019) over ``levels`` times uniform in [t_min, t_max].

    At level i with noise sigma_i = sde.sigma(t_i) it runs ``steps_per_level`` Langevin steps of size
    a_i = step_lr sigma_i^2 / sigma_L^2. Meant for VE paths (alpha = 1), where uniform times give
    geometric noise levels; VESDE(kernel="song") with t_min = 0 reproduces NCSN's sigma_1..sigma_L
    (the exact VE kernel has sigma(0) = 0, hence the default t_min > 0). Stability on a
    Gaussian-like p_t needs step_lr < 2 sigma_L^2. ``denoise`` adds Tweedie's step at
    the last level (NCSNv2). Returns [B, *event].
    """
    levels = check_positive_int(levels, "levels")
    steps_per_level = check_positive_int(steps_per_level, "steps_per_level")
    if not step_lr > 0:
        raise ValueError(f"step_lr must be positive, got {step_lr}")
    check_time_range(t_min, t_max)
    times = torch.linspace(t_max, t_min, levels, dtype=dtype or torch.get_default_dtype())
    x = _start(sde, shape, x_init, generator, times.dtype, device)
    times = times.to(dtype=x.dtype, device=x.device)
    sigmas = sde.sigma(times)
    if not bool((sigmas > 0).all()):
        raise ValueError("every noise level sde.sigma(t) must be positive; raise t_min")
    bar = tqdm(total=levels * steps_per_level, disable=not progress, desc="annealed Langevin")
    for t, sigma in zip(times, sigmas):
        size = step_lr * (sigma / sigmas[-1]) ** 2
        for _ in range(steps_per_level):
            x = _langevin_step(score_fn, x, t, size, None, generator)
        bar.update(steps_per_level)
    bar.close()
    return _denoise(score_fn, sde, x, times[-1]) if denoise else x

