"""Reverse-time samplers: Euler, tau-leaping and analytic (Tweedie) predictors, final denoising,
and clamped positions for prompting and infilling.

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

import functools
import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count, is_number
from ..core.choices import ABSORBING_ONLY, PREDICTORS
from ..core.draws import inverse_cdf
from ..core.dse_backends import triton_available
from ..core.processes import Graph, check_graph
from ..core.schedules import check_schedule
from ..core.score import ScoreFn
from .correctors import check_corrector_args, corrector_step, in_window, remask_probability, remask_tokens
from .decoding import check_confidence_args, check_shaping, sample_confidence, shape_log_weights
from .first_hitting import sample_first_hitting
from .score_cache import ScoreEvaluator, is_time_independent

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
        out[moving] = inverse_cdf(weights[moving] if destination is None else destination(moving), generator, dtype)
    return out


def _step_rows(graph: Graph, x: torch.Tensor, log_score: torch.Tensor, kind: str, dt: float, rate: float, dsigma: float,
               dtype: torch.dtype, generator, shape=None) -> torch.Tensor:
    """One reverse step of rows that can move (rate into x > 0): x Long[R], log_score [R, S] -> Long[R].

    shape: None, or a ``ddlm.decoding.shape_log_weights`` partial (absorbing only): rows that move
    draw their token from the reshaped weights over the real tokens; whether they move is unchanged.
    """
    w = graph.rate_into_value(x).to(dtype)
    current = x.unsqueeze(-1)
    if graph.mask_id is None and kind in ("analytic", "denoise"):
        # Uniform Tweedie step: y != x weighs expm1(dsigma)/N max(0, s_y - theta), theta = -expm1(-dsigma) mean(s),
        # x weighs max(0, e^dsigma - expm1(dsigma) mean(s)) (e^-dsigma + -expm1(-dsigma)/N). The subtraction cancels: dtype.
        n = graph.num_tokens
        s = torch.exp(log_score.to(dtype)).scatter_(-1, current, 0.0)
        mean = (s.sum(-1) + 1) / n
        theta = -math.expm1(-dsigma) * mean
        weights = s.sub_(theta[:, None]).clamp_min_(0).scatter_(-1, current, 0.0)
        move = weights.sum(-1) * (math.expm1(dsigma) / n)
        stay = (math.exp(dsigma) - math.expm1(dsigma) * mean).clamp_min(0) * (math.exp(-dsigma) - math.expm1(-dsigma) / n)
        return _draw_rows(weights, move, stay, x, generator, dtype)
    work = torch.promote_types(log_score.dtype, torch.float32)
    for attempt in (work, torch.float64):
        weights = torch.exp(log_score.to(attempt)).scatter_(-1, current, 0.0)
        if kind == "denoise" and graph.mask_id is not None:
            weights[:, graph.mask_id] = 0
        z = weights.sum(-1, dtype=dtype)
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
    ``ddlm.decoding.shape_log_weights`` partial (temperature / top-k / top-p of the destination,
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


def _check_args(graph: Graph, noise, shape, steps, predictor, x_init, fixed):
    check_graph(graph)
    check_schedule(noise)
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if predictor in ABSORBING_ONLY and graph.mask_id is None:
        raise ValueError(f"predictor={predictor!r} needs an absorbing process, got {graph!r}; allowed for it: "
                         f"{tuple(p for p in PREDICTORS if p not in ABSORBING_ONLY)}")
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
        if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool or tuple(fixed.shape) != shape:
            got = f"{fixed.dtype} {list(fixed.shape)}" if isinstance(fixed, torch.Tensor) else type(fixed).__name__
            raise ValueError(f"fixed must be a Bool tensor of shape {list(shape)}, got {got}")
        graph.check_clean(x_init[fixed], "x_init at fixed positions")
    return shape


def check_sampling_options(denoise, generator, dtype) -> None:
    """A ValueError naming the argument unless denoise is a bool, generator a torch.Generator or None and
    dtype torch.float32 or torch.float64 (the precision of the sampling arithmetic)."""
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise must be True or False, got {denoise!r:.80}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r:.80}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (the sampling arithmetic), got {dtype!r:.80}")


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
    cache: bool | None = None,
    stats: dict | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    confidence: str | None = None,
    unmask_schedule: str | None = None,
    threshold: float | None = None,
    entropy_bound: float | None = None,
    remask: float = 0.0,
    remask_window: tuple[float, float] | None = None,
    corrector_steps: int = 0,
    corrector_size: float = 1.0,
) -> torch.Tensor:
    """Draw sequences by simulating the reverse CTMC from t = 1 to t_min: Long[B, L].

    shape: (B, L). x_init: Long[B, L] starting tokens (default: a draw from the limit).
    fixed: Bool[B, L] positions clamped to x_init's clean tokens before every step and after the
    last (prompting, infilling); the other positions start from the limit. ``denoise`` ends
    with an analytic step from sigma_bar(t_min) to 0 that never lands on the mask, so an
    Absorbing run returns only real tokens.
    impl: "torch", "triton" (the fused kernels of ``ddlm.kernels.sampling``: one read of the
    log-scores per step, float64 Gumbel races; Uniform analytic steps stay on torch), "auto"
    (Triton for CUDA tensors) or "reference" (the full-row float64 path: every position scored
    and drawn by exponential races over [B, L, S]; for comparisons). The other impls score and
    step only the rows that can change (module docstring).
    predictor "first_hitting" (absorbing only, ``ddlm.first_hitting``): exact event-by-event
    unmasking, one score evaluation per event (per unmasked position of the longest run);
    ``steps`` is ignored (it is still checked) and so is ``impl``.
    cache: reuse the score of a sequence whose tokens did not change since its last evaluation.
    Only for score functions that declare ``time_independent = True`` (``ddlm.score_cache``:
    log s = f(x) - log(e^sigma_bar - 1) at masked rows), e.g. a ``time_conditioning=False`` model;
    None (default) turns it on exactly for those. Same seed, same draws with and without it.
    stats: a dict to fill with ``network_calls`` (score-function calls), ``sequences_scored``
    (sequences passed to them; the cache passes only those that changed), ``positions_scored``
    (rows evaluated) and ``cache`` (whether it was on); the progress bar shows the calls.

    Decoding strategies for absorbing models (``ddlm.decoding``; not exact samplers of the model
    unless left at their defaults). temperature (>= 0; 0: greedy), top_k (>= 1 or None), top_p
    (in (0, 1]): the token a masked position unmasks to is drawn from p(x0 | x_t) ~ s over the
    real tokens sharpened by the temperature and cut to the top_k most likely / the top_p nucleus;
    when and where positions unmask is unchanged (euler, tau_leaping, analytic, the final denoise,
    first_hitting). The defaults reproduce the plain draw token for token.
    predictor "confidence": ``steps`` steps each scoring every masked free position once and
    unmasking the most confident ones by ``confidence`` ("max_prob" (default), "margin",
    "entropy", "prob" (of the drawn token: LLaDA low-confidence remasking), "random"), as many as
    ``unmask_schedule`` ("linear" (default) or "cosine") says; or with ``threshold`` (in [0, 1))
    every position more confident than it (Fast-dLLM), or with ``entropy_bound`` (>= 0 nats)
    the most confident while their entropies sum within it (EB-Sampler), at least one per step
    (``steps`` is then unused). It always ends with no masked position (``denoise`` must be
    True); ``impl`` is unused. Exact (with exact ratios and the default temperature / top_k / top_p)
    only with one position per step and a confidence other than "prob" (``ddlm.decoding``).

    Correctors (``ddlm.correctors``; predictors euler, tau_leaping, analytic). remask (eta in [0, 1],
    absorbing only; ReMDM-style): before each step from t_k to t_{k+1} every unmasked free position
    is masked again with probability rho_k = eta min(1, (1 - alpha_{k+1}) / alpha_k) (capped so the
    remasked state is never noisier than t = 1), and the step starts from the correspondingly larger
    sigma_bar: the time marginals stay exact with exact ratios, earlier tokens get revised, no
    extra network call. remask_window (t_hi, t_lo): remask only in steps starting at t_k in
    [t_lo, t_hi] (None: every step); never in the final denoise. corrector_steps (int >= 0, any
    graph): after each predictor step, that many Euler steps of length corrector_size * dt of the
    forward-plus-reverse CTMC at t_{k+1}, which leaves p_t invariant; one network call each (it
    uses the unshaped ratios whatever temperature / top_k / top_p are).
    remask = 0 and corrector_steps = 0 (the defaults) are the plain sampler draw for draw.
    """
    shape = _check_args(graph, noise, shape, steps, predictor, x_init, fixed)
    check_sampling_options(denoise, generator, dtype)
    check_corrector_args(graph, predictor, remask, remask_window, corrector_steps, corrector_size)
    shaping = check_shaping(graph, temperature, top_k, top_p)
    check_confidence_args(graph, predictor, steps, confidence, unmask_schedule, threshold, entropy_bound)
    if predictor == "confidence" and denoise is not True:
        raise ValueError("denoise must be True for predictor='confidence': it always unmasks every position")
    shaper = functools.partial(shape_log_weights, temperature=temperature, top_k=top_k, top_p=top_p) if shaping else None
    if cache not in (None, True, False):
        raise ValueError(f"cache must be None, True or False, got {cache!r}")
    if stats is not None and not isinstance(stats, dict):
        raise ValueError(f"stats must be a dict to fill, or None; got {type(stats).__name__}")
    scores = ScoreEvaluator(score_fn, graph, is_time_independent(score_fn) if cache is None else cache)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not (is_number(t_min) and 0 < t_min < 1):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    if shaper is not None and impl == "reference":
        raise ValueError("temperature / top_k / top_p need impl 'auto', 'torch' or 'triton', not 'reference' (the full-row "
                         "comparison path draws the plain law only)")
    if device is None:
        device = x_init.device if x_init is not None else torch.device("cpu")
    device = torch.device(device)
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and triton_available(device) else "torch"
    elif impl == "triton" and not triton_available(device):
        raise RuntimeError(f"impl='triton' needs Triton and a CUDA device, or TRITON_INTERPRET=1; got {device}")
    x = graph.sample_limit(*shape, generator=generator, device=device)
    if x_init is not None:
        x = torch.where(fixed, x_init, x) if fixed is not None else x_init.to(torch.long, copy=True)

    def clamp(x: torch.Tensor) -> torch.Tensor:
        return torch.where(fixed, x_init, x) if fixed is not None else x

    def report(x: torch.Tensor) -> torch.Tensor:
        if stats is not None:
            stats.update(network_calls=scores.calls, sequences_scored=scores.sequences, positions_scored=scores.positions,
                         cache=scores.cache)
        return x

    if predictor == "first_hitting":
        return report(clamp(sample_first_hitting(scores, graph, noise, x, fixed, t_min=t_min, denoise=denoise, dtype=dtype,
                                                 generator=generator, progress=progress, shape=shaper)))
    if predictor == "confidence":
        return report(clamp(sample_confidence(
            scores, graph, noise, x, fixed, steps=steps, confidence=confidence, unmask_schedule=unmask_schedule,
            threshold=threshold, entropy_bound=entropy_bound, shape=shaper, t_min=t_min, dtype=dtype, generator=generator,
            progress=progress)))

    times = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    totals, rates = noise.total(times), noise.rate(times)

    def step(x: torch.Tensor, sigma_bar: float, kind: str, dt: float, rate: float, dsigma: float) -> torch.Tensor:
        x = clamp(x)
        sigma = torch.full((shape[0],), sigma_bar, dtype=torch.float64, device=device)
        if impl == "reference":  # every row scored and stepped
            return reverse_step(graph, x, scores(x, sigma, None), kind, dt, rate, dsigma, impl, dtype, generator, shaper)
        rows = movable(graph, x, fixed)
        if not bool(rows.any()):
            return x  # nothing can change: no score evaluation
        log_score = scores(x, sigma, rows)
        out = x.clone()
        out[rows] = reverse_step(graph, x[rows], log_score, kind, dt, rate, dsigma, impl, dtype, generator, shaper)
        return out

    bar = tqdm(range(steps), desc=f"sampling ({predictor})", disable=not progress, leave=None)  # leave=None: kept alone, cleared when nested under another bar (no blank lines)
    for k in bar:
        dsigma = float(totals[k] - totals[k + 1])
        rho = remask_probability(remask, float(totals[k]), float(totals[k + 1]), float(totals[0])) \
            if remask > 0 and in_window(remask_window, float(times[k])) else 0.0
        if rho > 0:  # forward to sigma_bar' = sigma_bar_k - log(1 - rho), then the reverse step from there
            x = remask_tokens(graph, clamp(x), rho, fixed, generator, dtype)
            start = float(totals[k]) - math.log1p(-rho)
            decrement = start - float(totals[k + 1])
            x = step(x, start, predictor, decrement, 1.0, decrement)  # euler / tau_leaping constant: dt * rate = decrement
        else:
            x = step(x, float(totals[k]), predictor, float(times[k] - times[k + 1]), float(rates[k]), dsigma)
        for _ in range(corrector_steps):
            x = corrector_step(scores, graph, clamp(x), fixed, float(totals[k + 1]), float(rates[k + 1]),
                               corrector_size * float(times[k] - times[k + 1]), generator)
        bar.set_postfix(calls=scores.calls, refresh=False)
    if denoise:
        x = step(x, float(totals[-1]), "denoise", 0.0, 0.0, float(totals[-1]))
    return report(clamp(x))
