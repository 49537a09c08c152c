"""The reverse steps of the grid samplers: Euler, tau-leaping and analytic (Tweedie), and the final denoise.

The time grid is ``t_k = linspace(1, t_min, steps + 1)``; each step moves every position from
t_k to t_{k+1} in parallel.

A step touches only the rows that can change: positions with a non-zero forward rate into
their token (Absorbing: masked positions; Uniform: all), never clamped ones. Only those rows
are scored (score functions that accept ``positions`` run their output head on them alone, see
``ddlm.score``) and drawn. Every step of both processes except the Uniform analytic one has the
same form per row with current token x: move to y != x with weight ``c * s_y`` or stay with
weight ``stay`` (row constants, DESIGN.md §3), so a draw is one Bernoulli (move with
probability c Z / (c Z + stay), Z = sum_{y != x} s_y) and, for rows that move, one inverse-CDF
draw from s over y != x. The Uniform analytic step weighs y != x by max(0, s_y - theta) with
theta = (1 - e^-dsigma) mean(s), a cancellation that is done in ``dtype``.

Precision: row sums, cumulative sums, uniforms and the Bernoulli run in ``dtype`` (float64 by
default: float32 categorical sampling measurably lowers the effective temperature); s = exp(log
s) is taken in the log-scores' own precision (at least float32): exp of a float32 log-score in
float32 is within 2 ulp of its float64 value, a relative change of weights that moves each step's
law by < 3e-7 in total variation, far below what float32 log-scores resolve. ``impl="reference"``
is the former full-row path (every position scored, float64 everywhere, exponential races over
[B, L, S]) for comparisons.
"""

from __future__ import annotations

import math

import torch

from ..core.draws import RowFunction, inverse_cdf, row_chunks, row_sums
from ..core.processes import Graph

IMPLS = ("auto", "torch", "triton", "reference")


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


def _step_constants(kind: str, dt: float, rate: float, dsigma: float) -> float:
    """kappa of the Euler-form steps: leave mass kappa * w * Z (tau-leaping: 1 - exp(-kappa w Z))."""
    return {"euler": dt * rate, "tau_leaping": dt * rate, "analytic": math.expm1(dsigma), "denoise": 1.0}[kind]


def _draw_rows(weights: torch.Tensor, move: torch.Tensor, stay: torch.Tensor, x: torch.Tensor, generator, dtype,
               destination=None) -> torch.Tensor:
    """Per row: stay at x with probability stay / (move + stay), else y ~ weights (zero at x): Long[R].

    weights [R, S] >= 0 (any float dtype) sum to a positive value where move > 0; move, stay [R] in dtype.
    weights may be a ``ddlm.core.draws.RowFunction`` (``inverse_cdf``).
    destination: None, or a function of the moving rows' indices Long[M] giving the weights [M, S] to
    draw their y from instead (reshaped p(x0 | x_t), ``ddlm.decoding``); the move/stay coin is unchanged.
    """
    total = move + stay
    if not bool((total > 0).all()):
        raise ValueError("every row of weights needs positive mass; the score function gave a state no reverse probability")
    u = torch.rand(x.shape, dtype=dtype, device=x.device, generator=generator)
    moving = (u * total < move).nonzero().squeeze(1)
    out = x.clone()
    if moving.numel():
        if destination is not None:
            out[moving] = inverse_cdf(destination(moving), generator, dtype)
        else:  # the rows of weights drawn in place, not copied out
            out[moving] = inverse_cdf(weights, generator, dtype, None if moving.numel() == x.numel() else moving)
    return out


def _step_rows(graph: Graph, x: torch.Tensor, log_score: torch.Tensor, kind: str, dt: float, rate: float, dsigma: float,
               dtype: torch.dtype, generator, shape=None) -> torch.Tensor:
    """One reverse step of rows that can move (rate into x > 0): x Long[R], log_score [R, S] -> Long[R].

    shape: None, or a ``ddlm.sampling.decoding.Decoding`` (absorbing only): rows that move
    draw their token from the reshaped weights over the real tokens; whether they move is unchanged.
    """
    w = graph.rate_into_value(x).to(dtype)
    current = x.unsqueeze(-1)
    if graph.mask_id is None and kind in ("analytic", "denoise"):
        # Uniform Tweedie step: y != x weighs expm1(dsigma)/N max(0, s_y - theta), theta = -expm1(-dsigma) mean(s),
        # x weighs max(0, e^dsigma - expm1(dsigma) mean(s)) (e^-dsigma + -expm1(-dsigma)/N). The subtraction cancels: dtype.
        # A block of rows at a time (row_chunks) in one reused buffer; the draw recomputes the moving rows' weights
        # the same way (the same values) instead of keeping an [R, S] float64 tensor.
        n = graph.num_tokens
        scratch = torch.empty(min(log_score.shape[0], row_chunks(*log_score.shape, log_score.device)[0][1]), log_score.shape[-1],
                              dtype=dtype, device=log_score.device)

        def tweedie(index):
            """(weights [k, S] in scratch, mean(s) [k]) of the rows index (a slice or Long[k])."""
            rows = log_score[index]
            buffer = scratch[: rows.shape[0]] if rows.shape[0] <= scratch.shape[0] else torch.empty_like(rows, dtype=dtype)
            s = buffer.copy_(rows).exp_().scatter_(-1, current[index], 0.0)
            mean = (s.sum(-1) + 1) / n
            theta = -math.expm1(-dsigma) * mean
            return s.sub_(theta[:, None]).clamp_min_(0).scatter_(-1, current[index], 0.0), mean

        mean = torch.empty(x.shape, dtype=dtype, device=x.device)
        sums = torch.empty(x.shape, dtype=dtype, device=x.device)
        for a, b in row_chunks(*log_score.shape, log_score.device):
            weights, mean[a:b] = tweedie(slice(a, b))
            torch.sum(weights, -1, out=sums[a:b])
        move = sums * (math.expm1(dsigma) / n)
        stay = (math.exp(dsigma) - math.expm1(dsigma) * mean).clamp_min(0) * (math.exp(-dsigma) - math.expm1(-dsigma) / n)
        weights = RowFunction(lambda index: tweedie(index)[0], log_score.shape, log_score.device)
        return _draw_rows(weights, move, stay, x, generator, dtype)
    work = torch.promote_types(log_score.dtype, torch.float32)
    for attempt in (work, torch.float64):
        weights = torch.exp(log_score.to(attempt)).scatter_(-1, current, 0.0)
        if kind == "denoise" and graph.mask_id is not None:
            weights[:, graph.mask_id] = 0
        z = row_sums(weights, dtype)
        if bool(torch.isfinite(z).all()) or attempt == torch.float64:
            break  # else exp overflowed in the working precision: redo in float64
    kappa_w = _step_constants(kind, dt, rate, dsigma) * w
    if kind == "denoise":
        move, stay = z, torch.zeros_like(z)
    elif kind == "tau_leaping":
        move, stay = -torch.expm1(-kappa_w * z), torch.exp(-kappa_w * z)
    else:  # euler, and the absorbing analytic step (kappa = expm1(dsigma))
        move = kappa_w * z
        stay = (1 - move).clamp_min(0)
    destination = None
    if shape is not None:
        def destination(moving: torch.Tensor) -> torch.Tensor:
            log_weights = log_score[moving].to(dtype).scatter_(-1, current[moving], -math.inf)
            if graph.mask_id is not None:
                log_weights[:, graph.mask_id] = -math.inf
            return shape(log_weights)
    return _draw_rows(weights, move, stay, x, generator, dtype, destination)


def reverse_step(
    graph: Graph, x: torch.Tensor, log_score: torch.Tensor, kind: str, dt: float, rate: float, dsigma: float,
    impl: str = "torch", dtype: torch.dtype = torch.float64, generator=None, shape=None,
) -> torch.Tensor:
    """One reverse step of x Long[...] given log_score [..., S]: Long[...] (e.g. [B, L], or gathered rows [R]).

    kind: "euler" / "tau_leaping" (time step dt at rate sigma(t) = rate), "analytic" (total noise
    down by dsigma) or "denoise" (analytic down by dsigma to 0, never onto the mask). Only rows
    with a non-zero forward rate into their token can move, and only they are read. impl
    "torch" (row form of the module docstring), "triton" (the fused kernel, for every kind but
    Uniform analytic and denoise, which need the row mean of s first and use torch) or
    "reference" (full rows, float64 everywhere, exponential races). shape: a
    ``ddlm.sampling.decoding.Decoding`` (temperature / top-k / top-p of the destination,
    absorbing only; runs the torch path, refused by "reference") or None.
    """
    if impl == "reference":
        if shape is not None:
            raise ValueError("temperature / top_k / top_p need impl 'torch', 'triton' or 'auto', not 'reference'")
        score = _ratios(log_score, x, dtype)
        if kind == "euler":
            return euler_step(graph, x, score, torch.tensor(rate, dtype=dtype, device=x.device), dt, generator)
        if kind == "tau_leaping":
            return tau_leaping_step(graph, x, score, torch.tensor(rate, dtype=dtype, device=x.device), dt, generator)
        dsigma = torch.tensor(dsigma, dtype=dtype, device=x.device)
        return analytic_step(graph, x, score, dsigma, generator, clean_only=kind == "denoise")
    flat, rows = x.reshape(-1), log_score.reshape(-1, log_score.shape[-1])
    live = (graph.rate_into_value(flat) > 0).nonzero().squeeze(1)
    if live.numel() < flat.numel():
        flat_live, rows = flat[live], rows[live]
    else:
        flat_live = flat
    if not flat_live.numel():
        return x.clone()
    if impl == "triton" and shape is None and (graph.mask_id is not None or kind in ("euler", "tau_leaping")):
        from ..kernels.sampling import triton_reverse_step

        kappa = torch.full(flat_live.shape, _step_constants(kind, dt, rate, dsigma), dtype=torch.float64, device=x.device)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        exclude = graph.mask_id if kind == "denoise" else -1
        mode = "euler" if kind == "analytic" else kind  # the absorbing analytic step has the Euler form
        moved = triton_reverse_step(rows.contiguous(), flat_live, graph.rate_into_value(flat_live), kappa, mode, seed, exclude)
    else:
        moved = _step_rows(graph, flat_live, rows, kind, dt, rate, dsigma, dtype, generator, shape)
    if flat_live is flat:
        return moved.reshape(x.shape)
    return flat.clone().index_copy_(0, live, moved).reshape(x.shape)


def movable(graph: Graph, x: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Bool[B, L]: the positions a reverse step can change (rate into the token > 0, e.g. masked ones), not clamped."""
    rows = graph.rate_into_value(x) > 0
    return rows & ~fixed if fixed is not None else rows
