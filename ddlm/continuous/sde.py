"""Linear Gaussian SDEs on t in [0, 1] with data at t = 0: ``x_t = alpha(t) x0 + sigma(t) eps``.

A process is fixed by its path (alpha, sigma). The forward SDE ``dx = f(t) x dt + g(t) dW`` that
has this kernel is

    f = d log(alpha) / dt,        g^2 = d(sigma^2)/dt - 2 f sigma^2,

and the reverse-time SDE and probability-flow ODE are (Anderson 1982; Song et al. 2021)

    dx = [f x - g^2 grad log p_t(x)] dt + g dW_bar,        dx/dt = f x - 1/2 g^2 grad log p_t(x).

Every class is a frozen dataclass of its constructor arguments and holds no state; coefficient
methods take a time tensor of any shape and return a tensor of the same shape. Methods that also
take ``x [B, *event]`` accept ``t`` as a 0-d tensor, a float or a [B] tensor.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._common import (
    as_time,
    batch_time,
    check_choice,
    check_shape,
    event_size,
    per_sample,
    randn_like,
    sum_event,
)

__all__ = [
    "GaussianSDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "OrnsteinUhlenbeck",
    "RectifiedFlow",
]


class GaussianSDE(ABC):
    """Base class: subclasses give alpha, sigma and their time derivatives (``_alpha`` ...).

    The drift coefficient f and the squared diffusion g^2 are derived from the path; subclasses
    with simple closed forms override ``_drift_coef`` and ``_diffusion_sq`` for precision.
    """

    # ---- path, supplied by subclasses (t already validated) ----
    @abstractmethod
    def _alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_sigma(self, t: Tensor) -> Tensor: ...

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at t = 1."""

    def _drift_coef(self, t: Tensor) -> Tensor:
        return self._d_alpha(t) / self._alpha(t)

    def _diffusion_sq(self, t: Tensor) -> Tensor:
        sigma = self._sigma(t)
        return 2 * sigma * (self._d_sigma(t) - self._drift_coef(t) * sigma)

    # ---- coefficients of t (any shape in, same shape out) ----
    def alpha(self, t) -> Tensor:
        """Signal scale alpha(t) of the kernel."""
        return self._alpha(as_time(t))

    def sigma(self, t) -> Tensor:
        """Noise standard deviation sigma(t) of the kernel."""
        return self._sigma(as_time(t))

    def d_alpha(self, t) -> Tensor:
        """d alpha / dt."""
        return self._d_alpha(as_time(t))

    def d_sigma(self, t) -> Tensor:
        """d sigma / dt."""
        return self._d_sigma(as_time(t))

    def drift_coef(self, t) -> Tensor:
        """f(t) in the drift f(t) x; equals d log alpha / dt."""
        return self._drift_coef(as_time(t))

    def diffusion_sq(self, t) -> Tensor:
        """g(t)^2; equals d sigma^2/dt - 2 f sigma^2."""
        return self._diffusion_sq(as_time(t))

    def diffusion(self, t) -> Tensor:
        """g(t)."""
        return self.diffusion_sq(t).sqrt()

    # ---- functions of x [B, *event] and t (0-d or [B]) ----
    def drift(self, x: Tensor, t) -> Tensor:
        """Forward drift f(t) x, shaped like x."""
        t = batch_time(t, x)
        return per_sample(self._drift_coef(t), x) * x

    def reverse_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE, f x - g^2 score (integrated with dt < 0)."""
        t = batch_time(t, x)
        return per_sample(self._drift_coef(t), x) * x - per_sample(self._diffusion_sq(t), x) * score

    def probability_flow_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        """Velocity of the probability-flow ODE, f x - 1/2 g^2 score."""
        t = batch_time(t, x)
        return per_sample(self._drift_coef(t), x) * x - 0.5 * per_sample(self._diffusion_sq(t), x) * score

    def marginal(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean [B, *event] and std (broadcastable to x0) of the kernel p(x_t | x0)."""
        t = batch_time(t, x0)
        return per_sample(self._alpha(t), x0) * x0, per_sample(self._sigma(t), x0)

    def perturb(
        self, x0: Tensor, t, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw x_t = alpha x0 + sigma eps; returns (x_t, eps), both shaped like x0."""
        mean, std = self.marginal(x0, t)
        if noise is None:
            noise = randn_like(x0, generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return mean + std * noise, noise

    def discretize(self, x: Tensor, t, s, method: str = "exact") -> tuple[Tensor, Tensor]:
        """Mean and std of x_s given x_t for s >= t (one forward step).

        ``method="exact"``: the exact transition, mean (alpha_s/alpha_t) x and variance
        sigma_s^2 - (alpha_s/alpha_t)^2 sigma_t^2 (DDPM's sqrt(1 - beta_i), beta_i for VP; SMLD's
        sqrt(sigma_i^2 - sigma_{i-1}^2) for VE). ``method="euler"``: Euler-Maruyama,
        mean x + f(t) x (s - t), std g(t) sqrt(s - t).
        """
        check_choice(method, "method", ("exact", "euler"))
        t = batch_time(t, x)
        s = batch_time(s, x, name="s")
        if not bool((s >= t).all()):
            raise ValueError("discretize steps forward in time: s must be >= t")
        if method == "euler":
            h = s - t
            mean = x + per_sample(self._drift_coef(t) * h, x) * x
            return mean, per_sample((self._diffusion_sq(t) * h).sqrt(), x)
        ratio = self._alpha(s) / self._alpha(t)
        var = self._sigma(s) ** 2 - ratio**2 * self._sigma(t) ** 2
        return per_sample(ratio, x) * x, per_sample(var.clamp_min(0).sqrt(), x)

    # ---- prior at t = 1 ----
    def prior_sample(
        self,
        shape,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw from the prior N(0, prior_std^2 I); ``shape`` is [B, *event]."""
        shape = check_shape(shape)
        dtype = dtype or torch.get_default_dtype()
        return self.prior_std * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) in nats, summed over event dims: [B, *event] -> [B]."""
        if z.ndim < 1:
            raise ValueError("z must be shaped [B, *event]")
        var = self.prior_std**2
        return -0.5 * sum_event(z**2) / var - 0.5 * event_size(z) * math.log(2 * math.pi * var)


def _time_derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """d fn / dt by autograd for an elementwise ``fn``; works under ``torch.no_grad``."""
    with torch.enable_grad():
        tt = t.detach().requires_grad_(True)
        value = fn(tt)
        if not value.requires_grad:  # constant in t
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(value.sum(), tt, allow_unused=True)
    return torch.zeros_like(t) if grad is None else grad


@dataclass(frozen=True)
class LinearSDE(GaussianSDE):
    """The linear SDE whose kernel is N(alpha_fn(t) x0, sigma_fn(t)^2 I); f, g^2 by autograd.

    ``alpha_fn`` and ``sigma_fn`` map a time tensor elementwise to a tensor of the same shape
    (differentiable torch ops). ``prior_std`` defaults to sigma_fn(1). Where sigma is not
    differentiable (e.g. a square root at t = 0) the derived f and g are inf or nan.
    """

    alpha_fn: Callable[[Tensor], Tensor]
    sigma_fn: Callable[[Tensor], Tensor]
    prior_std: float | None = None

    def __post_init__(self):
        if self.prior_std is None:
            object.__setattr__(self, "prior_std", float(self.sigma_fn(torch.tensor(1.0, dtype=torch.float64))))
        if not self.prior_std > 0:
            raise ValueError(f"prior_std must be positive, got {self.prior_std}")

    def _alpha(self, t):
        return self.alpha_fn(t)

    def _sigma(self, t):
        return self.sigma_fn(t)

    def _d_alpha(self, t):
        return _time_derivative(self.alpha_fn, t)

    def _d_sigma(self, t):
        return _time_derivative(self.sigma_fn, t)


@dataclass(frozen=True)
class VPSDE(GaussianSDE):
    """Variance preserving (DDPM limit): beta(t) = beta_min + t (beta_max - beta_min).

    alpha = exp(-B/2), sigma^2 = 1 - exp(-B) with B(t) = int_0^t beta; f = -beta/2, g^2 = beta;
    prior N(0, I).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if not 0.0 <= self.beta_min <= self.beta_max or self.beta_max <= 0.0:
            raise ValueError(
                f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _alpha(self, t):
        return torch.exp(-0.5 * self._integral(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._integral(t)))

    def _d_alpha(self, t):
        return -0.5 * self._beta(t) * self._alpha(t)

    def _d_sigma(self, t):
        return 0.5 * self._beta(t) * torch.exp(-self._integral(t)) / self._sigma(t)

    def _drift_coef(self, t):
        return -0.5 * self._beta(t)

    def _diffusion_sq(self, t):
        return self._beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP (Song et al. 2021): the VP drift with g^2 = beta (1 - exp(-2B)).

    alpha = exp(-B/2) and the *std* sigma = 1 - exp(-B) (its variance is below the VP one).
    """

    def _sigma(self, t):
        return -torch.expm1(-self._integral(t))

    def _d_sigma(self, t):
        return self._beta(t) * torch.exp(-self._integral(t))

    def _diffusion_sq(self, t):
        return -self._beta(t) * torch.expm1(-2 * self._integral(t))


@dataclass(frozen=True)
class VESDE(GaussianSDE):
    """Variance exploding (SMLD/NCSN): s(t) = sigma_min (sigma_max/sigma_min)^t, f = 0, g^2 = ds^2/dt.

    ``kernel="exact"``: sigma(t)^2 = s(t)^2 - sigma_min^2, the true kernel of the SDE started at
    the data (sigma(0) = 0). ``kernel="song"``: sigma(t) = s(t) as in score_sde; exact only for
    data pre-blurred by N(0, sigma_min^2), so sigma(0) = sigma_min. Prior N(0, sigma_max^2 I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    kernel: str = "exact"

    def __post_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )
        check_choice(self.kernel, "kernel", ("exact", "song"))

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def _level(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        if self.kernel == "song":
            return self._level(t)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * t * self._log_ratio))

    def _d_sigma(self, t):
        return self._level(t) ** 2 * self._log_ratio / self._sigma(t)

    def _drift_coef(self, t):
        return torch.zeros_like(t)

    def _diffusion_sq(self, t):
        return 2 * self._log_ratio * self._level(t) ** 2

    @property
    def prior_std(self) -> float:
        return float(self.sigma_max)


@dataclass(frozen=True)
class OrnsteinUhlenbeck(GaussianSDE):
    """dx = -theta x dt + sqrt(2 theta) std dW: alpha = exp(-theta t), sigma^2 = std^2 (1 - exp(-2 theta t)).

    The stationary law N(0, std^2 I) is the prior (a stationary mean m is a translation: use x - m).
    VP with constant beta = 2 theta is the case std = 1.
    """

    theta: float
    std: float = 1.0

    def __post_init__(self):
        if not (self.theta > 0 and self.std > 0):
            raise ValueError(f"theta and std must be positive, got theta={self.theta}, std={self.std}")

    def _alpha(self, t):
        return torch.exp(-self.theta * t)

    def _sigma(self, t):
        return self.std * torch.sqrt(-torch.expm1(-2 * self.theta * t))

    def _d_alpha(self, t):
        return -self.theta * self._alpha(t)

    def _d_sigma(self, t):
        return self.std**2 * self.theta * torch.exp(-2 * self.theta * t) / self._sigma(t)

    def _drift_coef(self, t):
        return torch.full_like(t, -self.theta)

    def _diffusion_sq(self, t):
        return torch.full_like(t, 2 * self.theta * self.std**2)

    @property
    def prior_std(self) -> float:
        return float(self.std)


@dataclass(frozen=True)
class RectifiedFlow(GaussianSDE):
    """The straight path alpha = 1 - t, sigma = t (rectified flow / CondOT), prior N(0, I).

    Its velocity target is eps - x0. f = -1/(1 - t) and g^2 = 2t/(1 - t) diverge at t = 1, so
    score-based samplers on this path need t_max < 1; velocity models use ``odeint`` directly.
    """

    def _alpha(self, t):
        return 1 - t

    def _sigma(self, t):
        return t.clone()

    def _d_alpha(self, t):
        return torch.full_like(t, -1.0)

    def _d_sigma(self, t):
        return torch.ones_like(t)

    @property
    def prior_std(self) -> float:
        return 1.0
