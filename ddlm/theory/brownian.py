"""Brownian motion on a time grid, and the scaled random walks that converge to it (Donsker's theorem).

Brownian motion W has W(0) = 0 and independent Gaussian increments W(t) - W(s) ~ N(0, t - s), so
Cov(W(s), W(t)) = min(s, t). Donsker: with i.i.d. steps xi_k of mean 0 and variance 1 and
S_k = xi_1 + ... + xi_k, the walk W_n(t) = S_{floor(n t)} / sqrt(n) converges in law, as a path,
to W; so does its linear interpolation (S_k + (n t - k) xi_{k+1}) / sqrt(n), k = floor(n t).
Exactly, Cov(W_n(s), W_n(t)) = floor(n min(s, t)) / n for the step walk, and min(s, t) for the
interpolated one whenever floor(n s) != floor(n t).

Float64 throughout; every function takes an optional ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..core.checks import is_int

StepLaw = str | Callable[[tuple[int, ...], torch.Generator | None], torch.Tensor]
STEP_LAWS = ("rademacher", "gaussian")


def _check_times(times) -> torch.Tensor:
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.dim() != 1 or times.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D grid [T], got shape {list(times.shape)}")
    if not bool(torch.isfinite(times).all()) or bool((times < 0).any()) or bool((times.diff() < 0).any()):
        raise ValueError("times must be finite, >= 0 and non-decreasing")
    return times


def brownian_motion(times, num_paths: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """W at ``times`` (non-decreasing, >= 0): [num_paths, T] float64, from W(0) = 0 by independent N(0, dt) increments."""
    times = _check_times(times)
    if not is_int(num_paths, 1):
        raise ValueError(f"num_paths must be an int >= 1, got {num_paths!r}")
    dt = torch.diff(times, prepend=times.new_zeros(1))
    increments = torch.randn(num_paths, times.numel(), dtype=torch.float64, generator=generator) * dt.sqrt()
    return increments.cumsum(-1)


def _draw_steps(step: StepLaw, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    if step == "rademacher":
        return torch.randint(2, shape, generator=generator).double() * 2 - 1
    if step == "gaussian":
        return torch.randn(shape, dtype=torch.float64, generator=generator)
    if not callable(step):
        raise ValueError(f"step must be one of {STEP_LAWS} or a callable (shape, generator) -> tensor, got {step!r}")
    draws = step(shape, generator)
    if not isinstance(draws, torch.Tensor) or tuple(draws.shape) != shape or not bool(torch.isfinite(draws).all()):
        raise ValueError(f"the step law must return a finite tensor of shape {list(shape)}")
    return draws.to(torch.float64)


def scaled_random_walk(
    n: int,
    times,
    num_paths: int,
    step: StepLaw = "rademacher",
    interpolate: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Donsker's walk W_n(t) = S_{floor(n t)} / sqrt(n) at ``times``: [num_paths, T] float64.

    step: "rademacher" (+-1), "gaussian", or a callable (shape, generator) -> i.i.d. draws of a law
    with mean 0 and variance 1 (not checked). interpolate: the continuous piecewise-linear walk
    (S_k + (n t - k) xi_{k+1}) / sqrt(n) instead. n t is rounded to 9 decimals before the floor,
    so grid times such as t = 0.29, n = 100 give k = 29.
    """
    times = _check_times(times)
    if not is_int(n, 1) or not is_int(num_paths, 1):
        raise ValueError(f"n and num_paths must be ints >= 1, got n={n!r}, num_paths={num_paths!r}")
    scaled = torch.round(n * times, decimals=9)
    k = torch.floor(scaled).long()
    count = int(k.max()) + (1 if interpolate else 0)
    steps = _draw_steps(step, (num_paths, count), generator)
    walk = torch.cat([steps.new_zeros(num_paths, 1), steps.cumsum(-1)], -1)  # S_0 .. S_count
    out = walk[:, k]
    if interpolate:
        out = out + (scaled - k) * (walk[:, (k + 1).clamp_max(count)] - out)
    return out / math.sqrt(n)
