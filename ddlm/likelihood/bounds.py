"""Perplexity (NLL) upper bounds with Monte Carlo error bars (SEDD Thm 3.6).

    -log p(x0) <= integral_0^1 E_{x_t ~ p_{t|0}} sigma(t) sum_i DSE_i dt  +  KL(p_{1|0}(. | x0) || p_base)

The integral is estimated per sequence from ``num_t`` times, each with one draw of x_t; the
prior term is exact for per-token bases and Monte Carlo for a sequence-level ``base``. With the
exact ratios and the exact terminal marginal as base the bound is an equality.

``conditional_nll_bound`` bounds -log p(x0[free] | x0[fixed]): the fixed positions are clamped to
their tokens at every t, so the same theorem applies to the process on the free positions.
``block_estimates`` is the dataset-level estimator: a few times per block, stratified over all
blocks together, the standard error from the strata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count, is_int
from ..core.choices import T_SAMPLING
from ..core.losses import dse, dwdse
from ..core.processes import Graph, check_batch, check_graph
from ..core.schedules import check_schedule
from ..core.score import ScoreFn, evaluate_score

T_IMPORTANCE = ("power",)  # proposal densities over t for the training loss (training_times)


@dataclass
class NLLBound:
    """Per-sequence bound terms in nats: integral, prior and stderr are [B]. num_tokens: the tokens
    bounded, an int (every position) or Long[B] (the free positions of a conditional bound)."""

    integral: torch.Tensor
    prior: torch.Tensor
    stderr: torch.Tensor
    num_tokens: int | torch.Tensor
    num_t: int

    @property
    def bound(self) -> torch.Tensor:
        """The upper bound on -log p(x0) per sequence, nats [B]."""
        return self.integral + self.prior

    @property
    def per_token(self) -> torch.Tensor:
        """The bound in nats per bounded token, [B]."""
        return self.bound / self.num_tokens

    @property
    def ppl(self) -> torch.Tensor:
        """Perplexity bound exp(bound / tokens), [B]."""
        return torch.exp(self.per_token)


T_LAYOUTS = ("sequence", "pooled", "batch")  # how stratified_uniforms lays its strata over the slots


def _check_method(method: str) -> None:
    """Refuse a t_sampling method that is not one of T_SAMPLING."""
    if method not in T_SAMPLING:
        raise ValueError(f"t_sampling must be one of {T_SAMPLING}, got {method!r}")


def _check_slots(name: str, value, method: str, even: bool, low: int = 1) -> None:
    """Refuse an unknown method, or a number of slots ``name`` that is not an int >= low (an even one if ``even``)."""
    _check_method(method)
    if not is_int(value, low) or (even and value % 2):
        raise ValueError(f"{name} must be {'an even int >= 2' if even else f'an int >= {low}'} for t_sampling={method!r}, got {value!r}")


def _check_power(name: str, power) -> None:
    """Refuse a power of the time warp that is not a finite number >= 1."""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 1 <= power < math.inf:
        raise ValueError(f"{name} must be a finite number >= 1, got {power!r}")


def stratified_uniforms(size: int, method: str, layout: str = "sequence", generator: torch.Generator | None = None,
                        device=None, *, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Uniforms for the Monte Carlo estimate of a t integral, one per slot: (u, stratum).

    u: Float64[size] ([rows, size] with ``rows``), each slot marginally uniform. method: iid
    (independent draws), stratified (u = (stratum + v) / strata for v uniform: each stratum, an
    equal piece of the unit interval, holds the same number of slots) or antithetic (slots 2i and
    2i + 1 get a and 1 - a; an even size). stratum: Long[size] for stratified, else None.
    layout, which slots form one estimate:
    - sequence: each row (``rows`` of them, independent; ``sample_times``); size / 2 strata in
      order, two adjacent slots each (even size).
    - pooled: all slots (``pooled_times``); size / 2 strata, two slots each (even size), dealt to
      the slots in a random order, so each slot's u is uniform on its own.
    - batch: all slots and any slice of them (``batch_uniforms``); size strata, one slot each,
      dealt in a random order.
    u lies in (0, 1], for batch in [0, 1). Each layout's draws from ``generator`` are fixed (in
    number and order): stored estimates and the exact resume of training runs depend on them.
    """
    if layout not in T_LAYOUTS:
        raise ValueError(f"layout must be one of {T_LAYOUTS}, got {layout!r}")
    if rows is not None and (layout != "sequence" or not is_int(rows, 0)):
        raise ValueError(f"rows must be an int >= 0 with layout='sequence' (else None), got rows={rows!r}, layout={layout!r}")
    _check_slots("size", size, method, method == "antithetic" or (method == "stratified" and layout != "batch"))
    v, stratum = _layout_draws(size, method, layout, () if rows is None else (rows,), generator, device)
    if method == "antithetic":
        return torch.stack([v, 1 - v], dim=-1).reshape(v.shape[:-1] + (size,)), None
    if method == "stratified":
        return (stratum.to(torch.float64) + v) / (size if layout == "batch" else size // 2), stratum
    return v, None


def _layout_draws(size: int, method: str, layout: str, lead: tuple, generator, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layout's random draws, in its fixed order: v (for antithetic the first slot of each pair) and the strata."""
    def uniform(n: int) -> torch.Tensor:
        return torch.rand(*lead, n, generator=generator, dtype=torch.float64, device=device)

    if layout == "batch":  # [0, 1): the strata first; antithetic draws the pairs' first slots only
        stratum = torch.randperm(size, generator=generator, device=device) if method == "stratified" else None
        return uniform(size // 2 if method == "antithetic" else size), stratum
    v = 1 - uniform(size)  # (0, 1]; antithetic keeps half of it
    if method == "antithetic":
        return (v[..., : size // 2] if layout == "sequence" else v[..., 0::2]), None
    if method == "iid":
        return v, None
    if layout == "sequence":
        return v, torch.arange(size, device=device) // 2
    return v, torch.randperm(size, generator=generator, device=device) // 2


def _warped_times(u: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, dt/du) for the bound from u in (0, 1]: u clamped to [eps, 1] (so t > 0), then t = u^power."""
    return power_warp(u.clamp(min=torch.finfo(torch.float64).eps, max=1.0), power)


def sample_times(batch: int, num_t: int, method: str = "stratified", power: float = 2.0, generator: torch.Generator | None = None, device=None):
    """Times for the t integral and their weights: (t, dt/du), each [batch, num_t] float64.

    The integral over t is taken over u in (0, 1] with t = u^power, so that
    integral_0^1 f(t) dt = integral_0^1 f(u^power) power u^(power - 1) du. The integrand is
    heavy-tailed near t = 0 (values ~ 1/t with probability ~ t); power > 1 gives the estimate
    finite variance. u is drawn by method (``stratified_uniforms``, layout sequence: each row one
    estimate): stratified (num_t / 2 equal strata, two uniform draws each), antithetic (pairs u,
    1 - u) or iid. stratified and antithetic need an even num_t.
    """
    _check_slots("num_t", num_t, method, method != "iid", low=2)
    _check_power("t_power", power)
    return _warped_times(stratified_uniforms(num_t, method, "sequence", generator, device, rows=batch)[0], power)


def power_warp(u: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(u^power, d(u^power)/du) elementwise: the change of variable s = u^power on [0, 1], under which
    integral_0^1 f(s) ds = integral_0^1 f(u^power) power u^(power - 1) du. With u ~ U[0, 1], s has the
    density q(s) = s^(1/power - 1) / power (positive on (0, 1]) and the second output is 1 / q(s)."""
    return u**power, power * u ** (power - 1)


def batch_uniforms(size: int, method: str, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """One uniform per slot of a batch, Float64[size] in [0, 1), each marginally U[0, 1)
    (``stratified_uniforms`` with layout batch):

    iid: independent draws. stratified: slot j gets (pi_j + v_j) / size for a random permutation pi
    and independent v_j ~ U[0, 1): every stratum [k / size, (k + 1) / size) holds exactly one draw,
    and the permutation makes each slot's draw uniform on its own (so any slice of the batch is an
    unbiased estimate too). antithetic: slots 2i and 2i + 1 get v_i and 1 - v_i (size must be even).
    The training loop draws this over the global batch and hands each process and micro-batch its slice.
    """
    return stratified_uniforms(size, method, "batch", generator, device)[0]


def training_times(u: torch.Tensor, t_min: float, importance: str | None = None, power: float = 2.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Times t in [t_min, 1] for the training loss from uniforms u [B], and importance weights [B] (or None).

    importance None: t = t_min + (1 - t_min) u, uniform on [t_min, 1], no weights. ``power``:
    t = t_min + (1 - t_min) u^power, whose density q puts more draws at small t for power > 1; the
    weights p(t) / q(t) = power u^(power - 1) (p: the uniform density) keep the weighted loss an
    unbiased estimate of the same objective, E_q[w(t) f(t)] = E_p[f(t)].
    """
    if importance is None:
        return t_min + (1 - t_min) * u, None
    if importance not in T_IMPORTANCE:
        raise ValueError(f"t_importance must be one of {T_IMPORTANCE} or None, got {importance!r}")
    _check_power("t_importance_power", power)
    s, weight = power_warp(u, power)
    return t_min + (1 - t_min) * s, weight


def _mean_and_stderr(values: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate and its standard error from per-time values [B, num_t] drawn by sample_times."""
    num_t = values.shape[1]
    mean = values.mean(1)
    if method == "stratified":  # two draws per stratum: Var = sum_h (a_h - b_h)^2 / (4 H^2)
        pairs = values.reshape(values.shape[0], num_t // 2, 2)
        variance = ((pairs[..., 0] - pairs[..., 1]) ** 2).sum(1) / (4 * (num_t // 2) ** 2)
    elif method == "antithetic":  # pair means are i.i.d.
        pair_means = values.reshape(values.shape[0], num_t // 2, 2).mean(-1)
        variance = pair_means.var(1) / pair_means.shape[1]
    else:
        variance = values.var(1) / num_t
    return mean, variance.sqrt()


def _prior_term(graph: Graph, x0: torch.Tensor, sigma_bar: torch.Tensor, base, num_samples: int, generator, free: torch.Tensor | None = None):
    """KL(p_{1|0}(. | x0) || base) per sequence and its standard error, [B] each; with ``free`` Bool[B, L]
    over the free positions only (the others clamped to x0)."""
    batch, length = x0.shape
    if base is None:
        kl = graph.prior_kl(sigma_bar).to(x0.device)
        if free is not None:
            return kl * free.sum(1).to(kl.dtype), torch.zeros(batch, dtype=kl.dtype, device=x0.device)
        kl = kl * length
        return kl.expand(batch).clone(), torch.zeros(batch, dtype=kl.dtype, device=x0.device)
    if isinstance(base, torch.Tensor):
        if base.shape != (graph.num_states,) or bool(torch.any(base < 0)) or abs(float(base.sum()) - 1) > 1e-6:
            raise ValueError(f"a per-token base must be a probability vector of shape [{graph.num_states}]")
        rows = graph.transition(x0, sigma_bar.to(x0.device))  # [B, L, S]
        base = base.to(rows)
        kl = torch.xlogy(rows, rows) - torch.xlogy(rows, base)
        if free is not None:
            kl = kl * free.unsqueeze(-1)
        kl = kl.sum((-2, -1))
        return kl, torch.zeros_like(kl)
    if not callable(base):
        raise TypeError("base must be None, a probability vector [S], or a callable log p_base(x_T [n, L]) -> [n]")
    x0_rep = x0.repeat_interleave(num_samples, 0)
    x_T = graph.sample_transition(x0_rep, sigma_bar.to(x0.device), generator=generator)
    log_q = torch.log(graph.transition_prob(x0_rep, x_T, sigma_bar.to(x0.device)))
    if free is not None:
        free_rep = free.repeat_interleave(num_samples, 0)
        x_T = torch.where(free_rep, x_T, x0_rep)
        log_q = torch.where(free_rep, log_q, torch.zeros_like(log_q))
    log_q = log_q.sum(-1)
    log_base = torch.as_tensor(base(x_T), dtype=log_q.dtype, device=x0.device)
    if log_base.shape != log_q.shape:
        raise ValueError(f"base must return one log-probability per sequence, shape [{log_q.shape[0]}], got {list(log_base.shape)}")
    values = (log_q - log_base).reshape(batch, num_samples)
    spread = values.std(1) / math.sqrt(num_samples) if num_samples > 1 else torch.full_like(values[:, 0], math.nan)
    return values.mean(1), spread


def clamped_dwdse(score_fn: ScoreFn, graph: Graph, noise, x0: torch.Tensor, free: torch.Tensor, t: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """sigma(t) * sum over free positions of DSE_i, one draw of x_t each, the other positions clamped to x0: [B] nats.

    x0: Long[B, L] clean tokens; free: Bool[B, L]; t: [B] times in (0, 1]. x_t is drawn for every
    position (the same random stream as ``ddlm.losses.dwdse``) and the fixed positions are reset to
    x0 before the score function sees it; only the free rows of the score are asked for
    (row-restricted scores, ``ddlm.score``). With ``free`` all True this is ``dwdse``.
    """
    sigma_bar = noise.total(t)
    x_t = torch.where(free, graph.sample_transition(x0, sigma_bar[:, None], generator=generator), x0)
    log_score = evaluate_score(score_fn, x_t, sigma_bar, graph.num_states, positions=free)  # [R, S]
    rows = free.nonzero()
    per_row = dse(log_score, x_t[free], x0[free], sigma_bar[rows[:, 0]], graph)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device).index_add_(0, rows[:, 0], per_row.double())
    return noise.rate(t) * total


def _integral(integrand, x0: torch.Tensor, num_t: int, generator, t_sampling: str, t_power: float, batch_size: int | None, progress: bool):
    """The t integral per sequence and its standard error, [B] each; ``integrand(rows Long[n], t [n]) -> [n]``
    evaluates sequences x0[rows] at times t, at most ``batch_size`` per call."""
    batch = x0.shape[0]
    times, weights = sample_times(batch, num_t, t_sampling, t_power, generator, x0.device)  # [B, num_t]
    flat_t = times.t().reshape(-1)  # time-major, so a chunk covers whole sequences
    chunk = batch_size or batch
    values = []
    for start in tqdm(range(0, flat_t.numel(), chunk), desc="nll bound", disable=not progress, leave=None):  # leave=None: kept alone, cleared when nested under another bar (no blank lines)
        stop = min(start + chunk, flat_t.numel())
        rows = torch.arange(start, stop, device=x0.device) % batch
        values.append(integrand(rows, flat_t[start:stop]).double())
    return _mean_and_stderr(torch.cat(values).reshape(num_t, batch).t() * weights, t_sampling)


def _check_inputs(graph: Graph, noise, x0: torch.Tensor) -> None:
    """A TypeError / ValueError naming the argument unless graph and noise are a process and a schedule and
    x0 is a non-empty Long[B, L] batch of clean tokens."""
    check_graph(graph)
    check_schedule(noise)
    graph.check_clean(check_batch(x0))


@torch.no_grad()
def nll_bound(
    score_fn: ScoreFn,
    graph: Graph,
    noise,
    x0: torch.Tensor,
    num_t: int = 128,
    generator: torch.Generator | None = None,
    *,
    t_sampling: str = "stratified",
    t_power: float = 2.0,
    base: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> NLLBound:
    """Upper bound on -log p(x0) for each sequence of x0 Long[B, L], with standard errors.

    num_t: times per sequence for the integral (even for stratified / antithetic t).
    t_sampling, t_power: how the times are drawn (see ``sample_times``).
    base: the terminal distribution the reverse process starts from. None: the graph's
    ``prior(sigma_bar(1))`` per token (uniform, or the mask with the e^-sigma_bar leak), exact KL;
    a probability vector [S]: that per-token distribution, exact KL; a callable
    ``log p_base(x_T Long[n, L]) -> [n]``: a sequence-level base, KL by ``num_t`` Monte Carlo draws.
    batch_size: sequences per score_fn call (default B).
    The integral starts at sigma_bar(0): for schedules with sigma_bar(0) > 0 (Geometric) the
    sliver between clean data and sigma_bar(0) is omitted, as in SEDD.
    """
    check_count("batch_size", batch_size, allow_none=True)
    _check_inputs(graph, noise, x0)
    integral, integral_se = _integral(lambda rows, t: dwdse(score_fn, graph, noise, x0[rows], t, generator),
                                      x0, num_t, generator, t_sampling, t_power, batch_size, progress)
    prior, prior_se = _prior_term(graph, x0, noise.total(1.0), base, num_t, generator)
    return NLLBound(integral, prior, torch.sqrt(integral_se**2 + prior_se**2), x0.shape[1], num_t)


def check_fixed(x0: torch.Tensor, fixed) -> torch.Tensor:
    """``fixed`` as Bool[B, L] on x0's device: a Bool tensor of x0's shape (or [L], shared by every row) that
    leaves at least one free position in every row; a ValueError / TypeError naming it otherwise."""
    if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool:
        raise TypeError(f"fixed must be a Bool tensor [B, L] (True: a context position), got {type(fixed).__name__}"
                        f"{'' if not isinstance(fixed, torch.Tensor) else ' of dtype ' + str(fixed.dtype)}")
    if fixed.dim() == 1 and x0.dim() == 2 and fixed.shape[0] == x0.shape[1]:
        fixed = fixed.expand_as(x0)
    if tuple(fixed.shape) != tuple(x0.shape):
        raise ValueError(f"fixed must have the shape of x0 {list(x0.shape)} (or [L]), got {list(fixed.shape)}")
    fixed = fixed.to(x0.device)
    empty = (~fixed).sum(1) == 0
    if bool(empty.any()):
        raise ValueError(f"fixed leaves no free position in row {int(empty.nonzero()[0])}: there is nothing to bound")
    return fixed


@torch.no_grad()
def conditional_nll_bound(
    score_fn: ScoreFn,
    graph: Graph,
    noise,
    x0: torch.Tensor,
    fixed: torch.Tensor,
    num_t: int = 128,
    generator: torch.Generator | None = None,
    *,
    t_sampling: str = "stratified",
    t_power: float = 2.0,
    base: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> NLLBound:
    """Upper bound on -log p(x0[free] | x0[fixed]) per sequence of x0 Long[B, L], free = ~fixed Bool[B, L].

    The fixed positions are clamped to x0 at every t: the forward noise acts on the free positions
    only, the score function sees the clamped x_t, and the DSE integral and the prior term are
    summed over the free positions. ``num_tokens`` of the result is Long[B], the free positions
    per row, so ``per_token`` and ``ppl`` are per bounded (free) token. Other arguments as in
    ``nll_bound``; a callable ``base`` receives x_T with the fixed positions clamped and must return
    log p_base of its free positions.

    What it bounds. With any score function the clamped reverse process (the free positions move
    with rates sigma(t) Q[y, x] s(x)_y computed on the clamped sequence, the fixed ones never move;
    what ``ddlm.sampling.sample(..., fixed=...)`` discretises) has a law p_theta(free | fixed), and
    the theorem of ``nll_bound``, applied to that process, bounds -log p_theta(x0[free] | x0[fixed]).
    Absorbing graphs: a clamped real token has the law of an unmasked one, so the exact ratios
    on the clamped sequence are exactly the ratios of the conditional law's forward marginals;
    with exact ratios and the exact conditional terminal marginal as base the bound is an
    equality, and it bounds the data's -log p(continuation | context) as tightly as the model
    allows. Uniform graphs: a clamped token is read as a *noised* token that happens to show
    its clean value, so even exact ratios are those of p_t(free | noised context = context),
    not of the conditional law's marginals; the bound still holds for the model's clamped
    process (p_theta above), but that process is not the data's conditional even with a perfect
    model, so the value is not a bound on the data's conditional -log p.
    """
    check_count("batch_size", batch_size, allow_none=True)
    _check_inputs(graph, noise, x0)
    free = ~check_fixed(x0, fixed)
    integral, integral_se = _integral(lambda rows, t: clamped_dwdse(score_fn, graph, noise, x0[rows], free[rows], t, generator),
                                      x0, num_t, generator, t_sampling, t_power, batch_size, progress)
    prior, prior_se = _prior_term(graph, x0, noise.total(1.0), base, num_t, generator, free)
    return NLLBound(integral, prior, torch.sqrt(integral_se**2 + prior_se**2), free.sum(1), num_t)


def pooled_times(num_blocks: int, t_per_block: int, method: str = "stratified", power: float = 2.0,
                 generator: torch.Generator | None = None, device=None):
    """Times for the dataset-level estimator, one per (block, t) slot: (t, dt/du, block, stratum), each [slots].

    Slots are block-major: block b owns t_per_block slots (block[s] says whose a slot is).
    stratified: all slots share one stratification of (0, 1] into slots / 2 equal strata, two slots
    per stratum, the strata dealt to the slots in a random order, so every slot's u is uniform on
    its own (each block's estimate is unbiased) while the dataset's times cover (0, 1] evenly; with
    an odd number of slots one random block gets one extra slot. stratum[s] is the slot's stratum
    (for the standard error of the sum). antithetic: pairs u, 1 - u within each block (even
    t_per_block); iid: independent u; stratum is None for both (``stratified_uniforms``, layout pooled).
    t = u^power as in ``sample_times``.
    """
    _check_method(method)
    check_count("num_blocks", num_blocks)
    check_count("t_per_block", t_per_block)
    if method == "antithetic" and t_per_block % 2:
        raise ValueError(f"antithetic t needs an even t_per_block (pairs u, 1 - u), got {t_per_block}")
    _check_power("t_power", power)
    block = torch.arange(num_blocks, device=device).repeat_interleave(t_per_block)
    if method == "stratified" and block.numel() % 2:
        extra = torch.randint(num_blocks, (1,), generator=generator, device=device)
        block = torch.cat([block, extra]).sort().values
    u, stratum = stratified_uniforms(block.numel(), method, "pooled", generator, device)
    return *_warped_times(u, power), block, stratum


@dataclass
class BlockEstimates:
    """The dataset-level estimator's output: per block one unbiased estimate of its bound, nats.

    integral, prior: [n] float64; num_tokens: Long[n]; t_per_block: times per block (one block may
    have one more, see ``pooled_times``). slot_values: each (block, t) slot's contribution to the
    summed integral, [slots]; slot_strata: their strata (stratified t with an exact prior term), else
    None.
    """

    integral: torch.Tensor
    prior: torch.Tensor
    num_tokens: torch.Tensor
    t_per_block: int
    slot_values: torch.Tensor | None = None
    slot_strata: torch.Tensor | None = None

    @property
    def bound(self) -> torch.Tensor:
        """Per-block estimates of the upper bound on -log p(block), nats [n]."""
        return self.integral + self.prior

    def total(self, index: torch.Tensor | None = None) -> tuple[float, float]:
        """(estimate of the summed bound, its standard error) over all blocks, or over the blocks ``index``.

        Over all blocks with stratified t and an exact prior term: the stratified estimator's error,
        Var = sum over strata of (a - b)^2 for the two slots a, b of a stratum. It is not exact: it
        counts the difference between the two slots' blocks at nearly the same t (too large) and
        misses the variance of which block draws which stratum (too small); on an exact oracle it
        measures 0.9 (1 t per block) to 1.2 (2 t per block) times the spread of repeated estimates
        (tests/test_conditional_bound.py, docs/concepts/bound.md). Otherwise: sqrt(n var) of the
        per-block estimates, which counts the blocks' true differences and ignores any
        stratification (conservative); needs at least 2 blocks.
        """
        values = self.bound if index is None else self.bound[index]
        if index is None and self.slot_strata is not None:
            order = self.slot_strata.argsort()
            pairs = self.slot_values[order].reshape(-1, 2)
            return float(values.sum()), float((pairs[:, 0] - pairs[:, 1]).square().sum()) ** 0.5
        if values.numel() < 2:
            raise ValueError("the dataset-level estimator takes its standard error across blocks and needs at least 2 "
                             f"blocks, got {values.numel()}; use the per-text estimator (nll_bound)")
        return float(values.sum()), float(values.var() * values.numel()) ** 0.5


@torch.no_grad()
def block_estimates(
    score_fn: ScoreFn,
    graph: Graph,
    noise,
    blocks,
    t_per_block: int = 1,
    generator: torch.Generator | None = None,
    *,
    t_sampling: str = "stratified",
    t_power: float = 2.0,
    base: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> BlockEstimates:
    """The dataset-level estimator of the bound: ``t_per_block`` times per block (``pooled_times``), one draw of
    x_t each, instead of ``nll_bound``'s many times per sequence.

    blocks: a sequence of Long[L_b] token blocks (lengths may differ; equal lengths share score_fn
    calls of at most ``batch_size`` sequences, default all of a length). base and t_power as in
    ``nll_bound`` (a callable base is estimated with ``t_per_block`` draws). Model calls per token:
    t_per_block / block length, against num_t / block length for ``nll_bound``.
    """
    check_count("batch_size", batch_size, allow_none=True)
    check_graph(graph)
    check_schedule(noise)
    if isinstance(blocks, torch.Tensor):
        blocks = list(blocks)
    if not len(blocks):
        raise ValueError("blocks is empty; nothing to bound")
    for index, block in enumerate(blocks):
        if not isinstance(block, torch.Tensor) or block.dim() != 1 or not block.numel():
            raise ValueError(f"blocks[{index}] must be a non-empty Long[L] tensor")
        graph.check_clean(block, f"blocks[{index}]")
    device = blocks[0].device
    times, weights, slot_block, strata = pooled_times(len(blocks), t_per_block, t_sampling, t_power, generator, device)
    lengths = torch.tensor([block.numel() for block in blocks], device=device)
    per_block = torch.bincount(slot_block, minlength=len(blocks)).to(torch.float64)  # t_per_block (+1 for one block)
    slot_values = torch.zeros(len(times), dtype=torch.float64, device=device)
    prior = torch.zeros(len(blocks), dtype=torch.float64, device=device)
    with tqdm(total=len(blocks), desc="nll bound", unit="block", disable=not progress, leave=None) as bar:  # leave=None: as above
        for length in lengths.unique().tolist():
            members = (lengths == length).nonzero().squeeze(1)
            x0 = torch.stack([blocks[i] for i in members.tolist()])
            slots = torch.isin(slot_block, members).nonzero().squeeze(1)
            row_of = torch.full((len(blocks),), -1, dtype=torch.long, device=device)
            row_of[members] = torch.arange(len(members), device=device)
            chunk = batch_size or len(members)
            for start in range(0, len(slots), chunk):
                part = slots[start:start + chunk]
                value = dwdse(score_fn, graph, noise, x0[row_of[slot_block[part]]], times[part], generator).double()
                slot_values[part] = value * weights[part] / per_block[slot_block[part]]
                bar.update(len(part) / t_per_block)
            prior[members] = _prior_term(graph, x0, noise.total(1.0), base, t_per_block, generator)[0].double()
    integral = torch.zeros(len(blocks), dtype=torch.float64, device=device).index_add_(0, slot_block, slot_values)
    exact_prior = base is None or isinstance(base, torch.Tensor)
    return BlockEstimates(integral, prior, lengths.cpu(), t_per_block, slot_values, strata if exact_prior else None)
