"""Shared helpers: argument checks, time handling, broadcasting over event dims, noise."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""A model or callable ``(x [B, *event], t [B]) -> Tensor [B, *event]``."""

ProjectFn = Callable[[Tensor, Tensor], Tensor]
"""A projection ``(x [B, *event], t [B]) -> x [B, *event]`` that a sampler applies at every time it reaches."""


def as_time(t, *, like: Tensor | None = None, name: str = "t") -> Tensor:
    """``t`` as a floating tensor with every value in [0, 1] (dtype and device of ``like`` if given)."""
    if isinstance(t, bool) or (isinstance(t, Tensor) and t.dtype == torch.bool):
        raise TypeError(f"{name} must be a float or a floating tensor of times in [0, 1], got a bool")
    if not isinstance(t, (Tensor, numbers.Real)):
        raise TypeError(f"{name} must be a float or a tensor of times in [0, 1], got {type(t).__name__}")
    if like is not None and like.is_floating_point():
        dtype, device = like.dtype, like.device
    elif isinstance(t, Tensor):
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        device = t.device
    else:
        dtype, device = torch.get_default_dtype(), None
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(
            f"{name} must lie in [0, 1] (data at 0, noise at 1), got values in "
            f"[{t.min().item():.6g}, {t.max().item():.6g}]"
        )
    return t


def batch_time(t, x: Tensor, name: str = "t") -> Tensor:
    """Validate ``t`` against ``x [B, *event]``: returns a 0-d or a [B] tensor of x's dtype."""
    check_batched(x)
    t = as_time(t, like=x, name=name)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must be 0-d or shaped [B] = [{x.shape[0]}] to match x of shape "
            f"{tuple(x.shape)}, got shape {tuple(t.shape)}"
        )
    return t


def expand_time(t: Tensor, batch: int) -> Tensor:
    """A 0-d or [B] time tensor as a contiguous [B] tensor (what score functions receive)."""
    return t.expand(batch).contiguous() if t.ndim == 0 else t


def check_batched(x, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor shaped [B, *event], got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must be shaped [B, *event] (a batch dimension first), got a 0-d tensor")


def per_sample(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a 0-d or [B] coefficient so that it broadcasts against ``x [B, *event]``."""
    return c if c.ndim == 0 else c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


def sum_event(v: Tensor) -> Tensor:
    """Sum over every dimension but the first: [B, *event] -> [B]."""
    return v.reshape(v.shape[0], -1).sum(1)


def event_size(x: Tensor) -> int:
    return math.prod(x.shape[1:])


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_choice(value, name: str, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_time_range(t_min: float, t_max: float) -> None:
    for name, value in (("t_min", t_min), ("t_max", t_max)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a float in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if not t_min < t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min}, t_max={t_max}")


def check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints [B, *event], got {shape!r}") from None
    if len(shape) < 1 or any(n <= 0 for n in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive ints [B, *event], got {shape}")
    return shape


def call_model(fn: ScoreFn, x: Tensor, t: Tensor, name: str = "score_fn") -> Tensor:
    """Call ``fn(x, t [B])`` and check that it returns a tensor shaped like ``x``."""
    out = fn(x, expand_time(t, x.shape[0]))
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    return out


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


PROBES = ("rademacher", "gaussian")


def probe_like(x: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    """Hutchinson probe v shaped like x with E[v v^T] = I: Rademacher (+-1) or standard Gaussian."""
    check_choice(kind, "probe", PROBES)
    if kind == "gaussian":
        return randn_like(x, generator)
    bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
    return bits.to(x.dtype) * 2 - 1


def uniform_time(batch: int, t_min: float, t_max: float, generator, like: Tensor) -> Tensor:
    """t ~ U[t_min, t_max], shape [batch], dtype and device of ``like``."""
    u = torch.rand(batch, generator=generator, dtype=like.dtype, device=like.device)
    return t_min + (t_max - t_min) * u
