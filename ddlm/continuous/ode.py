"""Batched ODE integration in pure torch: Euler, Heun, RK4 (fixed steps) and adaptive Dormand-Prince 5(4).

The state is a tensor or a tuple of tensors sharing the batch dimension. All samples share one
time grid (the adaptive step is controlled by the worst sample), so batched results do not depend
on how the batch is split into replicas of the same sample.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor
from tqdm import tqdm

from ._common import check_choice, check_positive_int

__all__ = ["ODE_METHODS", "odeint"]

ODE_METHODS = ("euler", "heun", "rk4", "dopri5")

State = Union[Tensor, tuple]

# Dormand & Prince (1980) RK5(4)7M tableau; the 5th-order solution is propagated (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_ERR = tuple(b5 - b4 for b5, b4 in zip(_DP_B5, _DP_B4))
_MAX_ADAPTIVE_STEPS = 100_000


def _combine(y: Sequence[Tensor], h: float, ks: Sequence[Sequence[Tensor]], coefs: Sequence[float]):
    """y + h * sum_i coefs[i] * ks[i], componentwise over the state tuple."""
    out = []
    for j, yj in enumerate(y):
        acc = yj
        for c, k in zip(coefs, ks):
            if c != 0.0:
                acc = acc + (h * c) * k[j]
        out.append(acc)
    return tuple(out)


def odeint(
    fn: Callable[[State, Tensor], State],
    y: State,
    t_start: float,
    t_end: float,
    *,
    method: str = "heun",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    progress: bool = False,
) -> tuple[State, int]:
    """Integrate dy/dt = fn(y, t) from t_start to t_end (either direction).

    ``y`` is a tensor [B, ...] or a tuple of such tensors; ``fn`` receives the same structure and
    ``t`` as a [B] tensor (every entry equal) and returns the same structure. ``steps`` sets the
    uniform grid of the fixed-step methods; ``rtol``/``atol`` control ``"dopri5"`` (per-sample RMS
    error norm, worst sample decides). Returns (y at t_end, number of fn evaluations).
    """
    check_choice(method, "method", ODE_METHODS)
    is_tensor = isinstance(y, Tensor)
    state = (y,) if is_tensor else tuple(y)
    if not state or not all(isinstance(v, Tensor) and v.ndim >= 1 for v in state):
        raise TypeError("y must be a tensor [B, ...] or a non-empty tuple of such tensors")
    ref = state[0]
    batch = ref.shape[0]

    t_start, t_end = float(t_start), float(t_end)
    low, high = min(t_start, t_end), max(t_start, t_end)

    def f(values, t: float):
        t = min(max(t, low), high)  # stage times may overshoot the interval by rounding
        tb = torch.full((batch,), t, dtype=ref.dtype, device=ref.device)
        out = fn(values[0] if is_tensor else values, tb)
        out = (out,) if is_tensor else tuple(out)
        if len(out) != len(values) or any(o.shape != v.shape for o, v in zip(out, values)):
            raise ValueError("fn must return the structure and shapes of y")
        return out

    if method == "dopri5":
        state, nfe = _dopri5(f, state, t_start, t_end, rtol, atol, progress)
    else:
        state, nfe = _fixed(f, state, t_start, t_end, method, check_positive_int(steps, "steps"), progress)
    return (state[0] if is_tensor else state), nfe


def _fixed(f, y, t0, t1, method, steps, progress):
    h = (t1 - t0) / steps
    nfe = 0
    for i in tqdm(range(steps), disable=not progress, desc=f"ode/{method}"):
        t = t0 + i * h
        k1 = f(y, t)
        if method == "euler":
            y, nfe = _combine(y, h, [k1], [1.0]), nfe + 1
        elif method == "heun":
            k2 = f(_combine(y, h, [k1], [1.0]), t + h)
            y, nfe = _combine(y, h, [k1, k2], [0.5, 0.5]), nfe + 2
        else:  # rk4
            k2 = f(_combine(y, h, [k1], [0.5]), t + h / 2)
            k3 = f(_combine(y, h, [k2], [0.5]), t + h / 2)
            k4 = f(_combine(y, h, [k3], [1.0]), t + h)
            y, nfe = _combine(y, h, [k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6]), nfe + 4
    return y, nfe


def _error_norm(err, y_old, y_new, rtol, atol) -> float:
    """max over the batch of the per-sample RMS of err / (atol + rtol max(|y_old|, |y_new|))."""
    total, count = 0.0, 0
    for e, a, b in zip(err, y_old, y_new):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        total = total + (e / scale).pow(2).reshape(e.shape[0], -1).sum(1)
        count += a[0].numel()
    return float((total / count).sqrt().max())


def _dopri5(f, y, t0, t1, rtol, atol, progress):
    span = t1 - t0
    if span == 0.0:
        return y, 0
    direction = 1.0 if span > 0 else -1.0
    h = direction * min(abs(span), 0.01)
    t, k1, nfe = t0, f(y, t0), 1
    bar = tqdm(total=abs(span), disable=not progress, desc="ode/dopri5")
    for _ in range(_MAX_ADAPTIVE_STEPS):
        if direction * (t1 - t) <= 0:
            break
        if direction * (t + h - t1) > 0:
            h = t1 - t
        ks = [k1]
        for i in range(1, 7):
            ks.append(f(_combine(y, h, ks, _DP_A[i]), t + _DP_C[i] * h))
        nfe += 6
        y_new = _combine(y, h, ks, _DP_B5)
        err = _combine(tuple(torch.zeros_like(v) for v in y), h, ks, _DP_ERR)
        norm = _error_norm(err, y, y_new, rtol, atol)
        if norm <= 1.0:
            t_next = t1 if abs(t1 - (t + h)) <= 1e-12 * abs(span) else t + h
            bar.update(abs(t_next - t))
            t, y, k1 = t_next, y_new, ks[6]
        factor = 10.0 if norm == 0.0 else min(10.0, max(0.2, 0.9 * norm ** (-0.2)))
        h = h * factor
        if abs(h) < 1e-14 * max(1.0, abs(t)):
            raise RuntimeError(f"dopri5 step size underflow at t={t:.6g}; the ODE may be stiff or singular")
    else:
        raise RuntimeError(f"dopri5 did not reach t_end within {_MAX_ADAPTIVE_STEPS} steps")
    bar.close()
    return y, nfe
