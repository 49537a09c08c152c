"""Perplexity (NLL) upper bounds with Monte Carlo error bars (SEDD Thm 3.6).

    -log p(x0) <= integral_0^1 E_{x_t ~ p_{t|0}} sigma(t) sum_i DSE_i dt  +  KL(p_{1|0}(. | x0) || p_base)

The integral is estimated per sequence from ``num_t`` times, each with one draw of x_t; the
prior term is exact for per-token bases and Monte Carlo for a sequence-level ``base``. With the
exact ratios and the exact terminal marginal as base the bound is an equality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_count
from .losses import dwdse
from .processes import Graph
from .score import ScoreFn

T_SAMPLING = ("stratified", "antithetic", "iid")


@dataclass
class NLLBound:
    """Per-sequence bound terms in nats: integral, prior and stderr are [B]."""

    integral: torch.Tensor
    prior: torch.Tensor
    stderr: torch.Tensor
    num_tokens: int
    num_t: int

    @property
    def bound(self) -> torch.Tensor:
        """The upper bound on -log p(x0) per sequence, nats [B]."""
        return self.integral + self.prior

    @property
    def per_token(self) -> torch.Tensor:
        """The bound in nats per token, [B]."""
        return self.bound / self.num_tokens

    @property
    def ppl(self) -> torch.Tensor:
        """Perplexity bound exp(bound / tokens), [B]."""
        return torch.exp(self.per_token)


def sample_times(batch: int, num_t: int, method: str = "stratified", power: float = 2.0, generator: torch.Generator | None = None, device=None):
    """Times for the t integral and their weights: (t, dt/du), each [batch, num_t] float64.

    The integral over t is taken over u in (0, 1] with t = u^power, so that
    integral_0^1 f(t) dt = integral_0^1 f(u^power) power u^(power - 1) du. The integrand is
    heavy-tailed near t = 0 (values ~ 1/t with probability ~ t); power > 1 gives the estimate
    finite variance. u is drawn by method: stratified (num_t / 2 equal strata, two uniform draws
    each), antithetic (pairs u, 1 - u) or iid. stratified and antithetic need an even num_t.
    """
    if method not in T_SAMPLING:
        raise ValueError(f"t_sampling must be one of {T_SAMPLING}, got {method!r}")
    if isinstance(num_t, bool) or not isinstance(num_t, int) or num_t < 2 or (method != "iid" and num_t % 2):
        need = "an int >= 2" if method == "iid" else "an even int >= 2"
        raise ValueError(f"num_t must be {need} for t_sampling={method!r}, got {num_t!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 1 <= power < math.inf:
        raise ValueError(f"t_power must be a finite number >= 1, got {power!r}")
    u = 1 - torch.rand(batch, num_t, generator=generator, dtype=torch.float64, device=device)  # (0, 1]
    if method == "stratified":
        strata = num_t // 2
        start = torch.arange(strata, dtype=torch.float64, device=device).repeat_interleave(2)
        u = (start + u) / strata
    elif method == "antithetic":
        half = u[:, : num_t // 2]
        u = torch.stack([half, 1 - half], dim=-1).reshape(batch, num_t)
    u = u.clamp(min=torch.finfo(torch.float64).eps, max=1.0)
    return u**power, power * u ** (power - 1)


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


def _prior_term(graph: Graph, x0: torch.Tensor, sigma_bar: torch.Tensor, base, num_samples: int, generator):
    """KL(p_{1|0}(. | x0) || base) per sequence and its standard error, [B] each."""
    batch, length = x0.shape
    if base is None:
        kl = graph.prior_kl(sigma_bar).to(x0.device) * length
        return kl.expand(batch).clone(), torch.zeros(batch, dtype=kl.dtype, device=x0.device)
    if isinstance(base, torch.Tensor):
        if base.shape != (graph.num_states,) or bool(torch.any(base < 0)) or abs(float(base.sum()) - 1) > 1e-6:
            raise ValueError(f"a per-token base must be a probability vector of shape [{graph.num_states}]")
        rows = graph.transition(x0, sigma_bar.to(x0.device))  # [B, L, S]
        base = base.to(rows)
        kl = (torch.xlogy(rows, rows) - torch.xlogy(rows, base)).sum((-2, -1))
        return kl, torch.zeros_like(kl)
    if not callable(base):
        raise TypeError("base must be None, a probability vector [S], or a callable log p_base(x_T [n, L]) -> [n]")
    x_T = graph.sample_transition(x0.repeat_interleave(num_samples, 0), sigma_bar.to(x0.device), generator=generator)
    log_q = torch.log(graph.transition_prob(x0.repeat_interleave(num_samples, 0), x_T, sigma_bar.to(x0.device))).sum(-1)
    log_base = torch.as_tensor(base(x_T), dtype=log_q.dtype, device=x0.device)
    if log_base.shape != log_q.shape:
        raise ValueError(f"base must return one log-probability per sequence, shape [{log_q.shape[0]}], got {list(log_base.shape)}")
    values = (log_q - log_base).reshape(batch, num_samples)
    return values.mean(1), values.std(1) / math.sqrt(num_samples)


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
    graph.check_clean(x0)
    if x0.dim() != 2:
        raise ValueError(f"x0 must be Long[B, L], got shape {list(x0.shape)}")
    batch, length = x0.shape
    times, weights = sample_times(batch, num_t, t_sampling, t_power, generator, x0.device)  # [B, num_t]
    flat_t = times.t().reshape(-1)  # time-major, so a chunk covers whole sequences
    flat_x0 = x0.repeat(num_t, 1)
    chunk = batch_size or batch
    values = []
    for start in tqdm(range(0, flat_t.numel(), chunk), desc="nll bound", disable=not progress):
        stop = start + chunk
        values.append(dwdse(score_fn, graph, noise, flat_x0[start:stop], flat_t[start:stop], generator).double())
    integrand = torch.cat(values).reshape(num_t, batch).t() * weights
    integral, integral_se = _mean_and_stderr(integrand, t_sampling)
    prior, prior_se = _prior_term(graph, x0, noise.total(1.0), base, num_t, generator)
    return NLLBound(integral, prior, torch.sqrt(integral_se**2 + prior_se**2), length, num_t)
