"""Correctors for the grid samplers of ``ddlm.sampling.sample``: remasking (absorbing) and predictor-corrector (any graph).

Both leave the time marginals of the sampler unchanged when the ratios are exact, and spend
network calls on revising tokens that the plain reverse chain would never touch again.

Remasking (``remask = eta``, absorbing only; ReMDM-style)
---------------------------------------------------------
Step k of the grid goes from t_k to t_{k+1}; alpha = e^{-sigma_bar} is the probability that a
position is unmasked, alpha_k = alpha(t_k) <= alpha_{k+1}. Before the predictor's reverse step,
every unmasked free position (not ``fixed``) becomes the mask independently with probability

    rho_k = min(eta * min(1, (1 - alpha_{k+1}) / alpha_k),  1 - alpha(1) / alpha_k),

and the reverse step then starts from sigma_bar' = sigma_bar_k - log(1 - rho_k) instead of
sigma_bar_k. Why this is exact (forward, then reverse):

- Forward. Masking an unmasked token with probability rho is the absorbing forward kernel over
  the noise increment -log(1 - rho): a position unmasked with probability alpha_k at noise
  sigma_bar_k stays unmasked with probability (1 - rho) alpha_k = alpha' = e^{-sigma_bar'}, and the
  process is Markov, so if x ~ p_{sigma_bar_k} then after remasking x ~ p_{sigma_bar'} (the same
  clean sequence behind it, more noise on top).
- Reverse. sigma_bar' >= sigma_bar_k >= sigma_bar_{k+1}, so the predictor's reverse step from
  sigma_bar' down to sigma_bar_{k+1} is a valid reverse step: the network is called once, at
  sigma_bar' on the remasked tokens; the analytic step uses dsigma = sigma_bar' - sigma_bar_{k+1};
  euler / tau_leaping use the same total-noise decrement as their step constant (in place of
  dt * sigma(t_k), from which it differs at second order in dt when rho = 0; with rho = 0 the
  constant is dt * sigma(t_k) as before, so remask = 0 is the plain sampler draw for draw).
  A masked position unmasks with probability (alpha_{k+1} - alpha') / (1 - alpha'), which lies in
  [0, 1] for every rho in [0, 1), so the unmasked fraction after the step is
  alpha' + (1 - alpha') (alpha_{k+1} - alpha') / (1 - alpha') = alpha_{k+1}.

So with exact ratios and the analytic predictor every time marginal (per position exactly, and
for the whole sequence up to the factorisation error of updating positions in parallel that every
grid predictor has) is the plain sampler's, while tokens unmasked earlier can be revised: a token
remasked in step k is redrawn from the model's conditional given the current context. Euler and
tau-leaping are first order in the decrement (they unmask with probability kappa Z instead of
the exact one), as without remasking, so for them the marginals hold to first order; large
rho_k (eta near 1 early in the run) makes the decrement large and the first-order error larger.

Relation to ReMDM (Wang et al. 2025). ReMDM's step from t to s draws z_s from z_t with a single
posterior in which an unmasked token remasks with probability sigma_t and a masked token unmasks
with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t); a token remasked in that step
cannot unmask in it, so keeping the marginal alpha_s needs that unmasking probability <= 1, i.e.
sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t). eta scales that bound (eta = 1 is
sigma_max, their "rescale" strategy with eta_rescale = eta). Here the remasked tokens join the
masked ones before the reverse step and can unmask in the same step, so no bound is needed for
validity; sigma_max is kept so that eta means what it means in ReMDM. The second cap,
rho_k <= 1 - alpha(1) / alpha_k, keeps sigma_bar' <= sigma_bar(1): the remasked state is never
noisier than the sampler's start, so the network is only asked about noise levels the sampler
visits anyway, and rho_k < 1 strictly (rho_k = 1 would be sigma_bar' = infinity, a restart from
the all-masked state at which a network conditioned on sigma_bar cannot be evaluated). It lowers
rho_k by at most alpha(1) / alpha_k (LogLinear: alpha(1) = 1e-3): for eta < 1 it binds only in the
first steps (rho_0 = 0 always), for eta = 1 wherever sigma_max = 1, where it leaves a fraction
alpha(1) of the tokens unmasked instead of none. Refusing eta = 1 instead would refuse it always,
since sigma_max = 1 at the first step of any schedule with alpha(t_0) + alpha(t_1) <= 1.

``remask_window = (t_hi, t_lo)`` remasks only in steps whose start time t_k lies in
[t_lo, t_hi]. The final denoising step never remasks; fixed positions never do.

Predictor-corrector (``corrector_steps``, ``corrector_size``; any graph)
------------------------------------------------------------------------
After each predictor step that lands at t = t_{k+1} (not after the final denoise), K corrector
steps at t each make one Euler step of length dt_c = corrector_size * (t_k - t_{k+1}) of the
CTMC whose per-position rates are, for y != x (x the current token, s the score at t),

    R_c(x -> y) = sigma(t) [ Q(x, y) + Q(y, x) s_y(x) ]     (forward rate + reverse rate),

one network call per corrector step. It leaves p_t invariant. Write F(x -> y) = sigma Q(x_i, y_i)
for sequences differing at one position i and R(x -> y) = sigma Q(y_i, x_i) p_t(y) / p_t(x) for the
reverse rate (s_y is that ratio). Then p_t(x) R(x -> y) = p_t(y) F(y -> x) for every pair, so
summing over x: the flux into y under R, sum_x p_t(x) R(x -> y), equals p_t(y) times y's total
forward exit rate (the flux out of y under F), and the flux out of y under R,
p_t(y) sum_x R(y -> x) = sum_x p_t(x) F(x -> y), equals the flux into y under F. Hence
(p_t (F + R))(y) = [in_F - out_F] + [out_F - in_F] = 0: p_t is stationary for F + R. (F + R is
also p_t-reversible: p_t(x) (F + R)(x -> y) = p_t(y) (F + R)(y -> x).)

The Euler step moves each free position to y with probability dt_c R_c(x -> y) and keeps it with
the rest (clipped at 0, as ``euler_step``), all positions in parallel: one step from p_t is p_t
up to O(dt_c^2) (two positions moving at once, and the clip when dt_c times the exit rate
exceeds 1), so K steps keep it to O(K dt_c^2); from any other law the chain moves towards p_t.
For Absorbing the forward part masks unmasked tokens at rate sigma(t) and the reverse part
unmasks masked ones, so every free position can change; only the rows with a reverse part (a
non-zero rate into their token: masked ones for Absorbing, all for Uniform) are scored. The step
runs on full rows in float64 (``torch`` only, whatever ``impl`` is). It uses the model's ratios as
they are: temperature / top_k / top_p reshape the predictor's unmasking draws only, not the
corrector's (the corrector's target is p_t itself).
"""

from __future__ import annotations

import math

import torch

from ..core.checks import is_int, is_number
from ..core.draws import inverse_cdf
from ..core.processes import Graph

GRID_PREDICTORS = ("euler", "tau_leaping", "analytic")


class Corrector:
    """Base of the correctors of the grid loop (``ddlm.sampling.loop``): hooks before and after each predictor step.

    ``loop``: a ``ddlm.sampling.loop.Loop`` (graph, scores, fixed, clamp, dtype, generator); ``grid``: its
    ``Grid`` (times, totals = sigma_bar, rates = sigma, each float64 [steps + 1]); k: the step from t_k to t_{k+1}.
    """

    def check(self, graph: Graph, predictor: str, on_grid: bool) -> None:
        """ValueError unless this corrector can run with graph and the predictor (its name; on_grid: a grid predictor)."""
        if not on_grid:
            raise ValueError(f"{self.option} needs one of the predictors {GRID_PREDICTORS}, got predictor={predictor!r}")

    def before_step(self, loop, x: torch.Tensor, grid, k: int) -> tuple[torch.Tensor, float | None]:
        """x Long[B, L] before step k, and the sigma_bar the step starts from (None: sigma_bar(t_k))."""
        return x, None

    def after_step(self, loop, x: torch.Tensor, grid, k: int) -> torch.Tensor:
        """x Long[B, L] after step k (at t_{k+1})."""
        return x


class Remask(Corrector):
    """ReMDM-style remasking (module docstring): eta in [0, 1]; window (t_hi, t_lo) or None (every step). Absorbing only."""

    option = "remask"

    def __init__(self, eta: float, window: tuple[float, float] | None = None):
        if not is_number(eta) or not 0 <= eta <= 1:
            raise ValueError(f"remask must be a number in [0, 1] (eta: 0 off, 1 ReMDM's largest remasking probability), got {eta!r}")
        if window is not None:
            ok = (isinstance(window, (tuple, list)) and len(window) == 2 and all(is_number(t) for t in window)
                  and 0 <= window[1] < window[0] <= 1)
            if not ok:
                raise ValueError(f"remask_window must be None or two numbers (t_hi, t_lo) with 0 <= t_lo < t_hi <= 1, got {window!r}")
        self.eta, self.window = eta, window

    def check(self, graph: Graph, predictor: str, on_grid: bool) -> None:
        if graph.mask_id is None:
            raise ValueError(f"remask needs an absorbing process, got {graph!r}; allowed for it: remask=0 (use corrector_steps "
                             "for a corrector that works on any process)")
        super().check(graph, predictor, on_grid)

    def before_step(self, loop, x: torch.Tensor, grid, k: int) -> tuple[torch.Tensor, float | None]:
        """Mask unmasked free tokens with probability rho_k; the step then starts from sigma_bar_k - log(1 - rho_k)."""
        if not in_window(self.window, float(grid.times[k])):
            return x, None
        rho = remask_probability(self.eta, float(grid.totals[k]), float(grid.totals[k + 1]), float(grid.totals[0]))
        if rho <= 0:
            return x, None
        x = remask_tokens(loop.graph, loop.clamp(x), rho, loop.fixed, loop.generator, loop.dtype)
        return x, float(grid.totals[k]) - math.log1p(-rho)

    def __repr__(self) -> str:
        return f"Remask({self.eta!r}, window={self.window!r})"


class PredictorCorrector(Corrector):
    """``steps`` Euler steps of length size * dt of the p_t-invariant chain after each predictor step (module docstring)."""

    option = "corrector_steps"

    def __init__(self, steps: int, size: float = 1.0):
        if not is_int(steps, 0):
            raise ValueError(f"corrector_steps must be an int >= 0 (0: no corrector), got {steps!r}")
        if not is_number(size) or not size > 0:
            raise ValueError(f"corrector_size must be a finite number > 0 (the corrector's dt in units of the sampler's dt), "
                             f"got {size!r}")
        self.steps, self.size = steps, size

    def after_step(self, loop, x: torch.Tensor, grid, k: int) -> torch.Tensor:
        dt = self.size * float(grid.times[k] - grid.times[k + 1])
        for _ in range(self.steps):
            x = corrector_step(loop.scores, loop.graph, loop.clamp(x), loop.fixed, float(grid.totals[k + 1]),
                               float(grid.rates[k + 1]), dt, loop.generator)
        return x

    def __repr__(self) -> str:
        return f"PredictorCorrector({self.steps!r}, size={self.size!r})"


def correctors_from_options(graph: Graph, predictor: str, on_grid: bool, correctors, remask, remask_window, corrector_steps,
                            corrector_size) -> list[Corrector]:
    """The correctors that ``sample(remask=..., corrector_steps=...)`` or ``sample(correctors=[...])`` name, checked.

    predictor: the predictor's name; on_grid: whether it is a grid predictor. At most one ``Remask``.
    """
    options = [Remask(remask, remask_window), PredictorCorrector(corrector_steps, corrector_size)]
    if correctors is None:
        correctors = [c for c in options if (c.eta if isinstance(c, Remask) else c.steps) > 0]
    elif remask != 0 or remask_window is not None or corrector_steps != 0 or corrector_size != 1.0:
        raise ValueError("pass correctors=[...] or the keywords remask / remask_window / corrector_steps / corrector_size, not both")
    if not isinstance(correctors, (list, tuple)) or not all(isinstance(c, Corrector) for c in correctors):
        raise ValueError(f"correctors must be a list of ddlm.sampling.correctors.Corrector, got {correctors!r:.80}")
    if sum(isinstance(c, Remask) for c in correctors) > 1:
        raise ValueError("pass at most one Remask corrector")
    for corrector in correctors:
        corrector.check(graph, predictor, on_grid)
    return list(correctors)


def remask_probability(eta: float, total_k: float, total_next: float, total_start: float) -> float:
    """rho_k (module docstring) from sigma_bar at t_k, at t_{k+1} and at the start t = 1; always < 1 when total_start > total_k."""
    if eta <= 0:
        return 0.0
    alpha_k, alpha_next = math.exp(-total_k), math.exp(-total_next)
    sigma_max = min(1.0, (1.0 - alpha_next) / alpha_k)
    cap = -math.expm1(total_k - total_start)  # 1 - alpha(1) / alpha_k: sigma_bar' stays <= sigma_bar(1)
    return max(0.0, min(eta * sigma_max, cap))


def in_window(window, t: float) -> bool:
    """Whether start time t lies in the remask window (t_hi, t_lo); None is every step."""
    return window is None or window[1] <= t <= window[0]


def remask_tokens(graph: Graph, x: torch.Tensor, rho: float, fixed: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Mask every unmasked free position of x Long[B, L] independently with probability rho: Long[B, L].

    The absorbing forward kernel over the noise increment -log(1 - rho) at the positions not ``fixed``.
    """
    u = torch.rand(x.shape, dtype=dtype, device=x.device, generator=generator)
    hit = (u < rho) & (x != graph.mask_id)
    if fixed is not None:
        hit &= ~fixed
    return x.masked_fill(hit, graph.mask_id)


def corrector_step(scores, graph: Graph, x: torch.Tensor, fixed: torch.Tensor | None, sigma_bar: float, rate: float,
                   dt: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Euler step of length dt of the p_t-invariant CTMC R_c = sigma(t) [Q(x, y) + Q(y, x) s_y] (module docstring).

    scores: a ``ddlm.score_cache.ScoreEvaluator`` (called once if any free row has a reverse part);
    x Long[B, L]; sigma_bar = sigma_bar(t) (the score's noise), rate = sigma(t). Float64 full rows.
    """
    free = torch.ones_like(x, dtype=torch.bool) if fixed is None else ~fixed
    if not bool(free.any()):
        return x
    xf = x[free]
    rates = graph.rate_from(xf).to(torch.float64)  # forward part Q(x, y), [F, S]
    scored = (graph.rate_into_value(x) > 0) & free  # rows with Q(y, x) > 0 for some y: the reverse part
    if bool(scored.any()):
        sigma = torch.full((x.shape[0],), sigma_bar, dtype=torch.float64, device=x.device)
        log_score = scores(x, sigma, scored).to(torch.float64)
        into = graph.rate_into(x[scored])
        reverse = torch.where(into > 0, into * torch.exp(log_score), torch.zeros_like(into))
        rates[scored[free]] += reverse
    probs = (dt * rate) * rates
    stay = (1 - probs.sum(-1, keepdim=True)).clamp_min(0)
    moved = inverse_cdf(probs.scatter_(-1, xf.unsqueeze(-1), stay), generator, torch.float64)
    out = x.clone()
    out[free] = moved
    return out
