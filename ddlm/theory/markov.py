"""Finite Markov chains: discrete time (a stochastic matrix P) and continuous time (a rate matrix Q).

Discrete time. ``P[x, y]`` is the probability of stepping x -> y: a square matrix of finite,
non-negative entries whose rows sum to 1. Its stationary distributions solve pi P = pi; there is
one for each closed communication class (for a finite chain, closed = recurrent), supported on
that class, and every stationary distribution is a mixture of them. With a stationary pi > 0 the
time-reversed chain is ``P^(x, y) = pi(y) P(y, x) / pi(x)``: a stationary path x0..xn has
probability pi(x0) P(x0, x1) ... P(x_{n-1}, xn) = pi(xn) P^(xn, x_{n-1}) ... P^(x1, x0). The
chain is reversible (P^ = P) when detailed balance pi(x) P(x, y) = pi(y) P(y, x) holds.

Continuous time. ``Q[x, y]`` (y != x) is the rate of jumping x -> y: off-diagonal entries >= 0,
rows summing to 0; the law at time t is row x of exp(t Q). Uniformization ``P = I + Q / rate``
(rate >= every exit rate -Q[x, x]) is a stochastic matrix with the same stationary
distributions (pi Q = 0) and the same communication classes. The reversed generator of a
marginal p (``reverse_rates``) is R^(x, y) = p(y) Q(y, x) / p(x) for y != x: with p the
stationary pi it is the time reversal of the stationary chain; with p = p_t, the marginal at
time t of a chain with generator Q_t, it is the generator at time t of the chain run backwards
(the identity behind every reverse sampler of ``ddlm.sampling``, where Q_t = sigma(t) Q and
p_t(y) / p_t(x) are the learned ratios).

Everything is float64; every random function takes an optional ``torch.Generator``.
Dense S x S matrices: meant for small state spaces (S up to a few thousand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.checks import is_int
from ..core.draws import inverse_cdf

ROW_SUM_TOL = 1e-9  # |row sum - 1| (stochastic) or |row sum| (rates, relative to the largest rate) allowed

Rates = torch.Tensor | Callable[[float], torch.Tensor]


# ------------------------------------------------------------------------------ validation
def _square(matrix, name: str) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):
        try:
            matrix = torch.as_tensor(matrix, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a square matrix (tensor or nested lists of numbers), got {type(matrix).__name__}") from error
    if matrix.is_complex() or matrix.dtype == torch.bool:
        raise TypeError(f"{name} must be a real matrix, got dtype {matrix.dtype}")
    matrix = matrix.to(torch.float64)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix [S, S], got shape {list(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{name} has non-finite entries (inf or nan)")
    return matrix


def check_stochastic(P, name: str = "P") -> torch.Tensor:
    """P as a float64 [S, S] tensor; ValueError unless square, finite, >= 0 with rows summing to 1."""
    P = _square(P, name)
    if bool((P < 0).any()):
        x, y = (int(i) for i in torch.nonzero(P < 0)[0])
        raise ValueError(f"{name} must be non-negative, got {name}[{x}, {y}] = {P[x, y].item()}")
    error = (P.sum(-1) - 1).abs()
    if bool((error > ROW_SUM_TOL).any()):
        x = int(error.argmax())
        raise ValueError(f"the rows of {name} must sum to 1 (within {ROW_SUM_TOL}), row {x} sums to {P[x].sum().item()}")
    return P


def check_rate_matrix(Q, name: str = "Q") -> torch.Tensor:
    """Q as a float64 [S, S] tensor; ValueError unless square, finite, off-diagonal >= 0, rows summing to 0."""
    Q = _square(Q, name)
    off = Q - torch.diag(torch.diagonal(Q))
    if bool((off < 0).any()):
        x, y = (int(i) for i in torch.nonzero(off < 0)[0])
        raise ValueError(f"the off-diagonal rates of {name} must be >= 0, got {name}[{x}, {y}] = {Q[x, y].item()}")
    error = Q.sum(-1).abs()
    if bool((error > ROW_SUM_TOL * max(1.0, Q.abs().max().item())).any()):
        x = int(error.argmax())
        raise ValueError(f"the rows of {name} must sum to 0, row {x} sums to {Q[x].sum().item()}")
    return Q


def _check_state(x, num_states: int, name: str) -> torch.Tensor:
    if is_int(x, 0) or (isinstance(x, (list, tuple)) and all(is_int(v, 0) for v in x)):
        x = torch.tensor(x, dtype=torch.long)
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an integer tensor of states, got {type(x).__name__}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_states):
        raise ValueError(f"{name} must hold states in [0, {num_states}), got values in [{int(x.min())}, {int(x.max())}]")
    return x.long()


def _check_distribution(p, num_states: int, name: str) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    if p.shape != (num_states,) or not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError(f"{name} must be a finite non-negative vector of {num_states} probabilities, got shape {list(p.shape)}")
    if abs(p.sum().item() - 1) > ROW_SUM_TOL:
        raise ValueError(f"{name} must sum to 1, sums to {p.sum().item()}")
    return p


# ------------------------------------------------------------------------------ structure
def _reachable(P: torch.Tensor) -> torch.Tensor:
    """Bool [S, S]: y can be reached from x in zero or more steps with positive probability."""
    reach = (P > 0) | torch.eye(P.shape[0], dtype=torch.bool)
    for _ in range(max(1, math.ceil(math.log2(P.shape[0]))) + 1):  # squaring doubles the path length
        reach = (reach.double() @ reach.double()) > 0
    return reach


def communication_classes(P) -> list[tuple[int, ...]]:
    """The communication classes of P (x ~ y when each reaches the other), ordered by smallest state."""
    P = check_stochastic(P)
    reach = _reachable(P)
    both = reach & reach.T
    classes, seen = [], set()
    for x in range(P.shape[0]):
        if x not in seen:
            members = tuple(int(y) for y in torch.nonzero(both[x]).flatten())
            seen.update(members)
            classes.append(members)
    return classes


def closed_classes(P) -> list[tuple[int, ...]]:
    """The closed (= recurrent, for a finite chain) communication classes: none can be left."""
    P = check_stochastic(P)
    reach = _reachable(P)
    return [c for c in communication_classes(P) if int(reach[list(c)].sum(-1).max()) == len(c)]


def is_irreducible(P) -> bool:
    """Whether every state reaches every other."""
    return len(communication_classes(P)) == 1


def period(P, state: int) -> int:
    """The period of ``state``: gcd of the lengths of the paths from it back to itself (0 if there are none).

    Computed from breadth-first levels in its class: gcd over the class's edges u -> v of level(u) + 1 - level(v).
    Shared by the whole class; 1 means aperiodic.
    """
    P = check_stochastic(P)
    state = int(_check_state(state, P.shape[0], "state"))
    members = next(c for c in communication_classes(P) if state in c)
    edges = [(u, v) for u in members for v in members if P[u, v] > 0]
    level, frontier = {state: 0}, [state]
    while frontier:
        following = []
        for u, v in edges:
            if u in frontier and v not in level:
                level[v] = level[u] + 1
                following.append(v)
        frontier = following
    d = 0
    for u, v in edges:
        d = math.gcd(d, level[u] + 1 - level[v])
    return d


# ------------------------------------------------------------------------------ discrete time
def _solve_stationary(P: torch.Tensor) -> torch.Tensor:
    """pi with pi P = pi, sum 1, for an irreducible stochastic P: one equation replaced by the normalisation."""
    system = P.T - torch.eye(P.shape[0], dtype=P.dtype)
    system[-1] = 1.0
    rhs = torch.zeros(P.shape[0], dtype=P.dtype)
    rhs[-1] = 1.0
    pi = torch.linalg.solve(system, rhs).clamp_min(0)
    return pi / pi.sum()


def stationary_distributions(P) -> torch.Tensor:
    """[K, S]: one stationary distribution per closed class (``closed_classes`` order), 0 off the class.

    Every stationary distribution of P is a convex combination of the K rows; K = 1 exactly when it is unique.
    """
    P = check_stochastic(P)
    rows = []
    for members in closed_classes(P):
        index = torch.tensor(members)
        pi = torch.zeros(P.shape[0], dtype=torch.float64)
        pi[index] = _solve_stationary(P[index][:, index])
        rows.append(pi)
    return torch.stack(rows)


def stationary_distribution(P) -> torch.Tensor:
    """The unique stationary distribution [S] (pi P = pi); ValueError if P has several closed classes."""
    pis = stationary_distributions(P)
    if pis.shape[0] > 1:
        raise ValueError(f"P has {pis.shape[0]} closed classes {closed_classes(P)}, so no unique stationary distribution; "
                         "use stationary_distributions(P)")
    return pis[0]


def n_step(P, n: int) -> torch.Tensor:
    """P^n [S, S]: row x is the law of X_n given X_0 = x."""
    if not is_int(n, 0):
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    return torch.linalg.matrix_power(check_stochastic(P), n)


def _stationary_positive(matrix: torch.Tensor, pi, name: str, stationary) -> torch.Tensor:
    pi = stationary(matrix) if pi is None else _check_distribution(pi, matrix.shape[0], "pi")
    if bool((pi <= 0).any()):
        raise ValueError(f"the time reversal needs pi > 0 everywhere; pi[{int(pi.argmin())}] = {pi.min().item()} "
                         f"(restrict {name} to a closed class first)")
    return pi


def reversed_chain(P, pi=None) -> torch.Tensor:
    """The time-reversed chain P^(x, y) = pi(y) P(y, x) / pi(x), [S, S].

    pi: a stationary distribution > 0 (default: the unique one); ValueError if pi has zeros or pi P != pi.
    """
    P = check_stochastic(P)
    pi = _stationary_positive(P, pi, "P", stationary_distribution)
    if not torch.allclose(pi @ P, pi, rtol=0, atol=ROW_SUM_TOL):
        raise ValueError("pi is not stationary for P (pi P != pi)")
    return pi[None, :] * P.T / pi[:, None]


def is_reversible(P, pi=None, atol: float = 1e-12) -> bool:
    """Detailed balance pi(x) P(x, y) = pi(y) P(y, x) within atol (pi: default the unique stationary distribution)."""
    P = check_stochastic(P)
    pi = stationary_distribution(P) if pi is None else _check_distribution(pi, P.shape[0], "pi")
    flow = pi[:, None] * P
    return bool(torch.allclose(flow, flow.T, rtol=0, atol=atol))


def simulate(P, x0, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Paths X_0 = x0, X_1, ..., X_steps: Long[..., steps + 1] for x0 an int or Long[...] of start states."""
    P = check_stochastic(P)
    x = _check_state(x0, P.shape[0], "x0")
    if not is_int(steps, 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    path = [x]
    for _ in range(steps):
        x = inverse_cdf(P[x.reshape(-1)], generator, torch.float64).reshape(x.shape)
        path.append(x)
    return torch.stack(path, -1)


def ergodic_average(f, path: torch.Tensor) -> torch.Tensor:
    """(1 / n) sum_k f(X_k) along the last axis of ``path`` Long[..., n]; f: values [S] per state. -> [...]."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if f.dim() != 1:
        raise ValueError(f"f must be a vector of values per state [S], got shape {list(f.shape)}")
    path = _check_state(path, f.shape[0], "path")
    if path.dim() == 0 or path.shape[-1] == 0:
        raise ValueError("path must be Long[..., n] with n >= 1 steps")
    return f[path].mean(-1)


def asymptotic_variance(P, f) -> float:
    """lim_n n Var((1/n) sum_{k<n} f(X_k)), the variance of the Markov-chain CLT (any start).

    sigma^2 = 2 <f~, g>_pi - <f~, f~>_pi with f~ = f - pi(f) and g the solution of the Poisson
    equation (I - P + 1 pi^T) g = f~. Needs a unique stationary distribution.
    """
    P = check_stochastic(P)
    pi = stationary_distribution(P)
    f = torch.as_tensor(f, dtype=torch.float64)
    if f.shape != pi.shape:
        raise ValueError(f"f must have one value per state [{pi.shape[0]}], got shape {list(f.shape)}")
    centred = f - pi @ f
    g = torch.linalg.solve(torch.eye(pi.shape[0], dtype=torch.float64) - P + pi[None, :], centred)
    return float(2 * pi @ (centred * g) - pi @ centred**2)


def hitting_times(P, target) -> torch.Tensor:
    """Expected steps to reach ``target`` (a state or a sequence of states) from each state: [S], 0 on the target.

    h = 0 on the target, h(x) = 1 + sum_y P(x, y) h(y) elsewhere: one linear solve over the states
    that reach the target with probability 1; +inf where the target may never be reached.
    """
    P = check_stochastic(P)
    S = P.shape[0]
    states = _check_state(torch.as_tensor(target), S, "target").reshape(-1)
    if states.numel() == 0:
        raise ValueError("target must name at least one state")
    in_target = torch.zeros(S, dtype=torch.bool)
    in_target[states] = True
    absorbed = torch.where(in_target[:, None], torch.eye(S, dtype=torch.float64), P)  # the target made absorbing
    reach = _reachable(absorbed)
    stuck = ~reach[:, in_target].any(-1)  # cannot reach the target at all
    escapes = reach[:, stuck].any(-1)  # may wander off to such a state: E[time] = inf
    finite = ~in_target & ~escapes
    h = torch.full((S,), math.inf, dtype=torch.float64)
    h[in_target] = 0.0
    index = torch.nonzero(finite).flatten()
    if index.numel():
        system = torch.eye(index.numel(), dtype=torch.float64) - P[index][:, index]
        h[index] = torch.linalg.solve(system, torch.ones(index.numel(), dtype=torch.float64))
    return h


def return_times(P) -> torch.Tensor:
    """Expected return time E_x[min{n >= 1: X_n = x}] for every x: [S] (inf for transient states).

    1 + sum_y P(x, y) h_x(y) with h_x the hitting times of x; equals 1 / pi(x) for an irreducible chain.
    """
    P = check_stochastic(P)
    out = torch.empty(P.shape[0], dtype=torch.float64)
    for x in range(P.shape[0]):
        h = hitting_times(P, x)
        out[x] = 1 + torch.where(P[x] > 0, P[x] * h, torch.zeros_like(h)).sum()
    return out


# ------------------------------------------------------------------------------ continuous time
def uniformize(Q, rate: float | None = None) -> tuple[torch.Tensor, float]:
    """(P, rate) with P = I + Q / rate; rate defaults to the largest exit rate (1 if there is none).

    exp(t Q) = sum_k Poisson(k; rate t) P^k; P has Q's stationary distributions and classes.
    """
    Q = check_rate_matrix(Q)
    fastest = float(-torch.diagonal(Q).min())
    rate = (fastest if fastest > 0 else 1.0) if rate is None else rate
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0 or rate < fastest:
        raise ValueError(f"rate must be a finite number >= the largest exit rate {fastest}, got {rate!r}")
    P = torch.eye(Q.shape[0], dtype=torch.float64) + Q / rate
    return P.clamp_min(0), float(rate)  # clamp: -0.0 rounding on the diagonal of the fastest state


def ctmc_transition(Q, t) -> torch.Tensor:
    """exp(t Q): [..., S, S] for times t >= 0 (a float or a tensor [...])."""
    Q = check_rate_matrix(Q)
    t = torch.as_tensor(t, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError("t must be finite and >= 0")
    return torch.linalg.matrix_exp(t[..., None, None] * Q)


def ctmc_stationary_distribution(Q) -> torch.Tensor:
    """The unique pi [S] with pi Q = 0, sum 1 (that of the uniformized chain); ValueError if it is not unique."""
    return stationary_distribution(uniformize(Q)[0])


def reverse_rates(rates, p) -> torch.Tensor:
    """Generator of the chain run backwards: R^(x, y) = p(y) Q(y, x) / p(x) for y != x, rows summing to 0.

    rates: Q [..., S, S] (the forward generator at the time of p); p: the marginal [..., S] then.
    Rows of states with p(x) = 0 are 0; no rate leads into them (R^(x, y) carries p(y)).
    """
    if not isinstance(rates, torch.Tensor) or not isinstance(p, torch.Tensor):
        raise TypeError("rates and p must be tensors ([..., S, S] and [..., S])")
    if rates.dim() < 2 or rates.shape[-1] != rates.shape[-2] or p.shape[-1] != rates.shape[-1]:
        raise ValueError(f"rates [..., S, S] and p [..., S] do not fit: shapes {list(rates.shape)} and {list(p.shape)}")
    if bool((p < 0).any()) or not bool(torch.isfinite(p).all()):
        raise ValueError("p must be finite and non-negative")
    rates, p = rates.to(torch.float64), p.to(torch.float64)
    eye = torch.eye(rates.shape[-1], dtype=torch.bool)
    inverse = torch.where(p > 0, 1 / p, torch.zeros_like(p))
    off = (p.unsqueeze(-2) * rates.transpose(-1, -2) * inverse.unsqueeze(-1)).masked_fill(eye, 0.0)
    return off - torch.diag_embed(off.sum(-1))


def ctmc_reversed(Q, pi=None) -> torch.Tensor:
    """The reversed generator Q^(x, y) = pi(y) Q(y, x) / pi(x) of a stationary chain, [S, S].

    pi: stationary (pi Q = 0) and > 0; default the unique one. ValueError otherwise.
    """
    Q = check_rate_matrix(Q)
    pi = _stationary_positive(Q, pi, "Q", ctmc_stationary_distribution)
    if not torch.allclose(pi @ Q, torch.zeros_like(pi), rtol=0, atol=ROW_SUM_TOL * max(1.0, Q.abs().max().item())):
        raise ValueError("pi is not stationary for Q (pi Q != 0)")
    return reverse_rates(Q, pi)


@dataclass(frozen=True)
class JumpPaths:
    """Piecewise-constant paths on [0, t_max]: path b holds ``states[b, k]`` from ``times[b, k]`` until ``times[b, k + 1]``.

    times: float64 [B, K], times[:, 0] = 0, +inf after a path's last jump before t_max; states: Long[B, K].
    """

    times: torch.Tensor
    states: torch.Tensor
    t_max: float

    def at(self, t) -> torch.Tensor:
        """States at times t (float or [T], in [0, t_max]): Long[B, T]."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if bool((t < 0).any()) or bool((t > self.t_max).any()) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"t must lie in [0, t_max = {self.t_max}] (the paths were simulated up to t_max)")
        index = torch.searchsorted(self.times, t.expand(self.times.shape[0], -1).contiguous(), right=True) - 1
        return self.states.gather(1, index)


def gillespie(Q, x0, t_max: float, generator: torch.Generator | None = None) -> JumpPaths:
    """Exact simulation on [0, t_max] from x0 (an int or Long[B]): exponential holding times with
    rate -Q[x, x], then a jump to y with probability Q[x, y] / -Q[x, x]. -> ``JumpPaths`` (B paths).
    """
    Q = check_rate_matrix(Q)
    x = _check_state(x0, Q.shape[0], "x0").reshape(-1)
    if not isinstance(t_max, (int, float)) or isinstance(t_max, bool) or not 0 <= t_max < math.inf:
        raise ValueError(f"t_max must be a finite number >= 0, got {t_max!r}")
    exit_rate = -torch.diagonal(Q)
    jump = Q.clamp_min(0)  # off-diagonal rates (the diagonal is <= 0)
    now = torch.zeros(x.shape[0], dtype=torch.float64)
    times, states = [now.clone()], [x.clone()]
    active = exit_rate[x] > 0
    while bool(active.any()):
        rows = torch.nonzero(active).flatten()
        hold = torch.empty(rows.numel(), dtype=torch.float64).exponential_(generator=generator) / exit_rate[x[rows]]
        jumped = now[rows] + hold <= t_max
        rows, hold = rows[jumped], hold[jumped]
        column_t = torch.full_like(now, math.inf)
        if rows.numel():
            now[rows] += hold
            x[rows] = inverse_cdf(jump[x[rows]], generator, torch.float64)
            column_t[rows] = now[rows]
        times.append(column_t)
        states.append(x.clone())
        active = torch.zeros_like(active)
        active[rows] = exit_rate[x[rows]] > 0
    return JumpPaths(torch.stack(times, 1), torch.stack(states, 1), float(t_max))


# ------------------------------------------------------------------------------ time-inhomogeneous marginals
def _rates_at(rates: Rates, t: float) -> torch.Tensor:
    return (rates(t) if callable(rates) else rates).to(torch.float64)


def _magnus4(generator_at: Callable[[float], torch.Tensor], q: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """q at every point of ``grid`` [T] for dq/ds = q A(s) (row vector q), starting from q at grid[0]: [T, S].

    One fourth-order Magnus step per grid interval, with the two Gauss points s1, s2 of the step:
    Omega = h/2 (A1 + A2) + sqrt(3)/12 h^2 (A1 A2 - A2 A1); q <- q exp(Omega). Exponential, so stable for stiff A.
    """
    c1, c2 = 0.5 - math.sqrt(3) / 6, 0.5 + math.sqrt(3) / 6
    out = [q]
    for s, h in zip(grid[:-1].tolist(), grid.diff().tolist()):
        a1, a2 = generator_at(s + c1 * h), generator_at(s + c2 * h)
        omega = h / 2 * (a1 + a2) + math.sqrt(3) / 12 * h**2 * (a1 @ a2 - a2 @ a1)
        out.append(out[-1] @ torch.linalg.matrix_exp(omega))
    return torch.stack(out)


def _check_grid(times, increasing: bool) -> torch.Tensor:
    times = torch.as_tensor(times, dtype=torch.float64)
    steps = times.diff() if times.dim() == 1 else None
    if steps is None or times.numel() < 2 or not bool(torch.isfinite(times).all()) or not bool(((steps > 0) if increasing else (steps < 0)).all()):
        raise ValueError(f"times must be a 1-D grid of at least 2 finite, strictly {'increasing' if increasing else 'decreasing'} times")
    return times


def evolve_marginal(rates: Rates, p, times) -> torch.Tensor:
    """Marginals [T, S] at ``times`` (increasing) of dp/dt = p Q_t from p [S] at times[0].

    rates: Q [S, S] or a callable t -> Q_t. One fourth-order Magnus step per grid interval: the
    error is O(h^4) for smooth Q_t; refine the grid where the rates change fast (for
    Q_t = sigma(t) Q the exact answer is p exp((sigma_bar(t) - sigma_bar(times[0])) Q)).
    """
    times = _check_grid(times, increasing=True)
    p = _check_distribution(p, _rates_at(rates, times[0].item()).shape[-1], "p")
    return _magnus4(lambda t: _rates_at(rates, t), p, times)


def reverse_marginal(rates: Rates, marginal: Callable[[float], torch.Tensor], q, times) -> torch.Tensor:
    """Laws [T, S] at forward ``times`` (decreasing) of the reversed chain started from q [S] at times[0].

    The reversed chain at forward time t has generator ``reverse_rates(Q_t, p_t)``, built from the
    forward rates (Q [S, S] or a callable t -> Q_t) and the forward marginal (a callable t -> p_t
    [S]); its law solves dq/ds = q R^_{times[0] - s}. Started from q = p_{times[0]} it returns p_t
    at every grid time (the reversal identity), up to the O(h^4) error of one fourth-order Magnus
    step per grid interval.
    """
    times = _check_grid(times, increasing=False)
    start = times[0].item()
    q = _check_distribution(q, _rates_at(rates, start).shape[-1], "q")
    return _magnus4(lambda s: reverse_rates(_rates_at(rates, start - s), marginal(start - s)), q, start - times)
