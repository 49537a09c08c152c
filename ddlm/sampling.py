"""Reverse-time samplers: Euler, tau-leaping and analytic (Tweedie) predictors, final denoising,
and clamped positions for prompting and infilling.

The time grid is ``t_k = linspace(1, t_min, steps + 1)``; each step moves every position from
t_k to t_{k+1} in parallel. Probabilities and categorical draws (exponential races) run in
``dtype`` (float64 by default: float32 races measurably lower the effective temperature).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .dse_backends import triton_available
from .processes import Graph
from .score import ScoreFn, evaluate_score

PREDICTORS = ("euler", "tau_leaping", "analytic")
IMPLS = ("auto", "torch", "triton")


def check_count(name: str, value, allow_none: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a positive int (or None where allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {value!r}")


def sample_categorical(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from unnormalised non-negative weights [..., S] -> Long[...] (exponential race)."""
    if bool((weights.sum(-1) <= 0).any()):
        raise ValueError("every row of weights needs positive mass; the score function gave a state no reverse probability")
    races = torch.empty_like(weights).exponential_(generator=generator)
    return (weights / races).argmax(-1)


def _ratios(log_score: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Ratios s [B, L, S] in dtype, with s = 1 at the current token."""
    return torch.exp(log_score.to(dtype)).scatter_(-1, x.unsqueeze(-1), 1.0)


def euler_step(graph: Graph, x: torch.Tensor, score: torch.Tensor, sigma: torch.Tensor, dt: float, generator=None) -> torch.Tensor:
    """P(y) = dt R(x -> y) for y != x; stay with the rest, clipped at 0. score [B, L, S], sigma = sigma(t)."""
    probs = dt * graph.reverse_rate(x, score, sigma.expand(x.shape))
    stay = (1 - probs.sum(-1, keepdim=True)).clamp_min(0)
    return sample_categorical(probs.scatter_(-1, x.unsqueeze(-1), stay), generator)


def tau_leaping_step(graph: Graph, x: torch.Tensor, score: torch.Tensor, sigma: torch.Tensor, dt: float, generator=None) -> torch.Tensor:
    """Rates frozen over the step: leave with probability 1 - exp(-dt sum_y R), destination ~ R."""
    rates = graph.reverse_rate(x, score, sigma.expand(x.shape))
    total = rates.sum(-1, keepdim=True)
    leave = -torch.expm1(-dt * total)
    probs = torch.where(total > 0, rates * leave / total.clamp_min(torch.finfo(rates.dtype).tiny), torch.zeros_like(rates))
    return sample_categorical(probs.scatter_(-1, x.unsqueeze(-1), 1 - leave), generator)


def analytic_step(graph: Graph, x: torch.Tensor, score: torch.Tensor, dsigma: torch.Tensor, generator=None, clean_only: bool = False) -> torch.Tensor:
    """Tweedie step down by dsigma of total noise: P(y) ~ [exp(-dsigma Q)^T s]_y exp(dsigma Q)[y, x].

    Exact per position when s is exact. ``clean_only`` drops the noise-only state (the mask).
    """
    probs = (graph.staggered_score(score, dsigma) * graph.transition_into(x, dsigma.to(score.dtype))).clamp_min(0)
    if clean_only and graph.mask_id is not None:
        probs[..., graph.mask_id] = 0
    return sample_categorical(probs, generator)


def reverse_step(
    graph: Graph, x: torch.Tensor, log_score: torch.Tensor, kind: str, dt: float, rate: float, dsigma: float,
    impl: str = "torch", dtype: torch.dtype = torch.float64, generator=None,
) -> torch.Tensor:
    """One reverse step of x Long[B, L] given log_score [B, L, S]: Long[B, L].

    kind: "euler" / "tau_leaping" (time step dt at rate sigma(t) = rate), "analytic" (total noise
    down by dsigma) or "denoise" (analytic down by dsigma to 0, never onto the mask). impl
    "triton" uses the fused kernel where the step has one (every kind but Uniform analytic and
    denoise, which need the row mean of s first).
    """
    if impl == "triton" and (graph.mask_id is not None or kind in ("euler", "tau_leaping")):
        from .kernels.sampling import triton_reverse_step

        flat = x.reshape(-1)
        coefficient = {"euler": dt * rate, "tau_leaping": dt * rate, "analytic": math.expm1(dsigma), "denoise": 1.0}[kind]
        kappa = torch.full(flat.shape, coefficient, dtype=torch.float64, device=x.device)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        exclude = graph.mask_id if kind == "denoise" else -1
        mode = "euler" if kind == "analytic" else kind  # the absorbing analytic step has the Euler form
        rows = log_score.reshape(-1, log_score.shape[-1])
        return triton_reverse_step(rows, flat, graph.rate_into_value(flat), kappa, mode, seed, exclude).reshape(x.shape)
    score = _ratios(log_score, x, dtype)
    if kind == "euler":
        return euler_step(graph, x, score, torch.tensor(rate, dtype=dtype, device=x.device), dt, generator)
    if kind == "tau_leaping":
        return tau_leaping_step(graph, x, score, torch.tensor(rate, dtype=dtype, device=x.device), dt, generator)
    dsigma = torch.tensor(dsigma, dtype=dtype, device=x.device)
    return analytic_step(graph, x, score, dsigma, generator, clean_only=kind == "denoise")


def _check_args(graph: Graph, shape, steps, predictor, x_init, fixed):
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    check_count("steps", steps)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ValueError(f"shape must be (batch, length) of positive ints, got {shape!r}")
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"shape must be (batch, length) of positive ints, got {shape!r}")
    if x_init is not None:
        graph.check_tokens(x_init, "x_init")
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {list(shape)}, got {list(x_init.shape)}")
    if fixed is not None:
        if x_init is None:
            raise ValueError("fixed needs x_init: the tokens to clamp the fixed positions to")
        if fixed.dtype != torch.bool or tuple(fixed.shape) != shape:
            raise ValueError(f"fixed must be a Bool tensor of shape {list(shape)}, got {fixed.dtype} {list(fixed.shape)}")
        graph.check_clean(x_init[fixed], "x_init at fixed positions")
    return shape


@torch.no_grad()
def sample(
    score_fn: ScoreFn,
    graph: Graph,
    noise,
    shape: Sequence[int],
    steps: int,
    predictor: str = "analytic",
    denoise: bool = True,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    *,
    t_min: float = 1e-5,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: bool = True,
    impl: str = "auto",
) -> torch.Tensor:
    """Draw sequences by simulating the reverse CTMC from t = 1 to t_min: Long[B, L].

    shape: (B, L). x_init: Long[B, L] starting tokens (default: a draw from the limit).
    fixed: Bool[B, L] positions clamped to x_init's clean tokens before every step and after the
    last (prompting, infilling); the other positions start from the limit. ``denoise`` ends
    with an analytic step from sigma_bar(t_min) to 0 that never lands on the mask, so an
    Absorbing run returns only real tokens.
    impl: "torch", "triton" (the fused kernels of ``ddlm.kernels.sampling``: one read of the
    log-scores per step, float64 Gumbel races; Uniform analytic steps stay on torch) or "auto"
    (Triton for CUDA tensors).
    """
    shape = _check_args(graph, shape, steps, predictor, x_init, fixed)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    if device is None:
        device = x_init.device if x_init is not None else torch.device("cpu")
    device = torch.device(device)
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and triton_available(device) else "torch"
    elif impl == "triton" and not triton_available(device):
        raise RuntimeError(f"impl='triton' needs Triton and a CUDA device, or TRITON_INTERPRET=1; got {device}")
    x = graph.sample_limit(*shape, generator=generator, device=device)
    if x_init is not None:
        x = torch.where(fixed, x_init, x) if fixed is not None else x_init.clone()

    def clamp(x: torch.Tensor) -> torch.Tensor:
        return torch.where(fixed, x_init, x) if fixed is not None else x

    times = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    totals, rates = noise.total(times), noise.rate(times)

    def step(x: torch.Tensor, sigma_bar: float, kind: str, dt: float, rate: float, dsigma: float) -> torch.Tensor:
        x = clamp(x)
        sigma = torch.full((shape[0],), sigma_bar, dtype=torch.float64, device=device)
        log_score = evaluate_score(score_fn, x, sigma, graph.num_states)
        return reverse_step(graph, x, log_score, kind, dt, rate, dsigma, impl, dtype, generator)

    for k in tqdm(range(steps), desc=f"sampling ({predictor})", disable=not progress):
        dsigma = float(totals[k] - totals[k + 1])
        x = step(x, float(totals[k]), predictor, float(times[k] - times[k + 1]), float(rates[k]), dsigma)
    if denoise:
        x = step(x, float(totals[-1]), "denoise", 0.0, 0.0, float(totals[-1]))
    return clamp(x)
