"""Noise schedules: total noise sigma_bar(t) = integral_0^t sigma(s) ds and its rate sigma(t).

Time runs from data (t = 0) to noise (t = 1). Both methods take a float or a tensor of times
in [0, 1] and return a tensor of the same shape (float64 for Python floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import is_number


def check_schedule(noise) -> None:
    """TypeError unless ``noise`` is a schedule: an object with methods ``total(t)`` and ``rate(t)`` (LogLinear, Geometric, ...)."""
    if isinstance(noise, type) or not (callable(getattr(noise, "total", None)) and callable(getattr(noise, "rate", None))):
        raise TypeError(f"noise must be a schedule with total(t) and rate(t), e.g. ddlm.LogLinear(), got {noise!r:.80}")


def _as_time(t: float | torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"t must be a float or a floating tensor of times in [0, 1], got {type(t).__name__}")
        t = torch.tensor(float(t), dtype=torch.float64)
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating tensor of times in [0, 1], got dtype {t.dtype}")
    if t.numel() and (bool(torch.any(t < 0)) or bool(torch.any(t > 1)) or bool(torch.any(torch.isnan(t)))):
        raise ValueError(f"t must lie in [0, 1], got values in [{t.min().item()}, {t.max().item()}]")
    return t


@dataclass(frozen=True)
class LogLinear:
    """Masking probability linear in t: 1 - exp(-sigma_bar(t)) = (1 - eps) t.

    sigma_bar(t) = -log(1 - (1 - eps) t),  sigma(t) = (1 - eps) / (1 - (1 - eps) t).
    """

    eps: float = 1e-3

    def __post_init__(self):
        if not (is_number(self.eps) and 0 < self.eps < 1):
            raise ValueError(f"eps must lie in (0, 1), got {self.eps!r}")

    def total(self, t: float | torch.Tensor) -> torch.Tensor:
        """sigma_bar(t), same shape as t."""
        return -torch.log1p(-(1 - self.eps) * _as_time(t))

    def rate(self, t: float | torch.Tensor) -> torch.Tensor:
        """sigma(t) = d sigma_bar / dt, same shape as t."""
        return (1 - self.eps) / (1 - (1 - self.eps) * _as_time(t))


@dataclass(frozen=True)
class Geometric:
    """sigma_bar(t) = sigma_min^(1 - t) sigma_max^t,  sigma(t) = sigma_bar(t) log(sigma_max / sigma_min).

    Note sigma_bar(0) = sigma_min > 0: the data end carries a little noise, as in SEDD.
    """

    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    def __post_init__(self):
        if not (is_number(self.sigma_min) and is_number(self.sigma_max) and 0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"need finite numbers 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}"
            )

    def total(self, t: float | torch.Tensor) -> torch.Tensor:
        """sigma_bar(t), same shape as t."""
        t = _as_time(t)
        return torch.exp((1 - t) * math.log(self.sigma_min) + t * math.log(self.sigma_max))

    def rate(self, t: float | torch.Tensor) -> torch.Tensor:
        """sigma(t) = d sigma_bar / dt, same shape as t."""
        return self.total(t) * math.log(self.sigma_max / self.sigma_min)
