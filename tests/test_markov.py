"""Finite Markov chains (ddlm.markov) and Brownian motion (ddlm.brownian) against exact oracles.

Oracles: linear algebra in float64 (pi P = pi, matrix powers, matrix exponentials), enumeration of
every path of a few steps, closed forms (gambler's ruin, Uniform's exp(sigma Q)), and Monte Carlo
with tolerances from the sample size.
"""

import itertools
import math

import pytest
import torch

import ddlm
from ddlm import brownian, markov

F64 = torch.float64


def random_stochastic(S, seed, zeros=False):
    gen = torch.Generator().manual_seed(seed)
    P = torch.rand(S, S, generator=gen, dtype=F64) + 0.05
    if zeros:
        P = P * (torch.rand(S, S, generator=gen) > 0.4) + torch.roll(torch.eye(S, dtype=F64), 1, 1)  # a cycle keeps it irreducible
    return P / P.sum(-1, keepdim=True)


def birth_death(S):
    up, down = torch.linspace(0.2, 0.6, S - 1, dtype=F64), torch.linspace(0.3, 0.1, S - 1, dtype=F64)
    P = torch.diag(up, 1) + torch.diag(down, -1)
    return P + torch.diag(1 - P.sum(-1))


BIASED_CYCLE = torch.tensor([[0.1, 0.7, 0.2], [0.2, 0.1, 0.7], [0.7, 0.2, 0.1]], dtype=F64)
REDUCIBLE = torch.tensor([  # {0, 1} and {4} closed, 2 and 3 transient
    [0.5, 0.5, 0.0, 0.0, 0.0],
    [0.9, 0.1, 0.0, 0.0, 0.0],
    [0.2, 0.0, 0.3, 0.3, 0.2],
    [0.0, 0.0, 0.5, 0.0, 0.5],
    [0.0, 0.0, 0.0, 0.0, 1.0],
], dtype=F64)


# ------------------------------------------------------------------------------ discrete time
@pytest.mark.parametrize("P", [random_stochastic(6, 0), random_stochastic(7, 1, zeros=True), BIASED_CYCLE, birth_death(5)])
def test_stationary_distribution_solves_pi_p_equals_pi(P):
    pi = markov.stationary_distribution(P)
    assert markov.is_irreducible(P)
    assert bool((pi > 0).all()) and abs(pi.sum().item() - 1) < 1e-14
    assert torch.allclose(pi @ P, pi, rtol=0, atol=1e-14)
    assert torch.allclose(markov.n_step(P, 500)[2], pi, atol=1e-12)  # aperiodic: rows of P^n -> pi


def test_reducible_chain_has_one_stationary_distribution_per_closed_class():
    assert markov.communication_classes(REDUCIBLE) == [(0, 1), (2, 3), (4,)]
    assert markov.communication_classes(REDUCIBLE.tolist()) == [(0, 1), (2, 3), (4,)]  # nested lists work too
    assert markov.closed_classes(REDUCIBLE) == [(0, 1), (4,)]
    assert not markov.is_irreducible(REDUCIBLE)
    pis = markov.stationary_distributions(REDUCIBLE)
    assert torch.allclose(pis @ REDUCIBLE, pis, rtol=0, atol=1e-14)
    assert torch.allclose(pis, torch.tensor([[9 / 14, 5 / 14, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=F64), atol=1e-14)
    with pytest.raises(ValueError, match="2 closed classes"):
        markov.stationary_distribution(REDUCIBLE)


CYCLE_3 = torch.roll(torch.eye(3, dtype=F64), 1, 1)
CYCLE_3_AND_6 = 0.5 * torch.roll(torch.eye(6, dtype=F64), 1, 1) + 0.5 * torch.roll(torch.eye(6, dtype=F64), 3, 1)  # loops of 6 and 2: period 2


@pytest.mark.parametrize("P", [BIASED_CYCLE, CYCLE_3, CYCLE_3_AND_6, birth_death(4), REDUCIBLE, random_stochastic(5, 2, zeros=True)], ids=range(6))
def test_period_is_the_gcd_of_return_lengths(P):
    power = torch.eye(P.shape[0], dtype=F64)
    returns = [[] for _ in range(P.shape[0])]
    for n in range(1, 4 * P.shape[0] ** 2):  # return lengths up to 4 S^2 generate the gcd
        power = power @ P
        for x in range(P.shape[0]):
            if power[x, x] > 0:
                returns[x].append(n)
    for x in range(P.shape[0]):
        assert markov.period(P, x) == math.gcd(*returns[x])


def test_period_of_a_bipartite_walk_is_two():
    walk = torch.tensor([[0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 1, 0]], dtype=F64)
    assert [markov.period(walk, x) for x in range(4)] == [2, 2, 2, 2]
    assert markov.period(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), 0) == 0  # 0 never returns


@pytest.mark.parametrize("P", [birth_death(6), "weighted graph"], ids=["birth-death", "weighted-graph"])
def test_reversed_chain_of_a_reversible_chain_is_itself(P):
    if isinstance(P, str):
        gen = torch.Generator().manual_seed(3)
        W = torch.rand(5, 5, generator=gen, dtype=F64) * (torch.rand(5, 5, generator=gen) > 0.3) + torch.diag(torch.ones(4, dtype=F64), 1)
        W = W + W.T  # symmetric edge weights: pi(x) is proportional to the total weight at x
        P = W / W.sum(-1, keepdim=True)
        assert torch.allclose(markov.stationary_distribution(P), W.sum(-1) / W.sum(), atol=1e-14)
    assert markov.is_reversible(P)
    assert torch.allclose(markov.reversed_chain(P), P, rtol=0, atol=1e-13)


@pytest.mark.parametrize("P", [BIASED_CYCLE, random_stochastic(4, 4, zeros=True)], ids=["biased-3-cycle", "random-4"])
@pytest.mark.parametrize("steps", [3, 4])
def test_reversed_chain_reverses_every_stationary_path(P, steps):
    pi, reverse = markov.stationary_distribution(P), markov.reversed_chain(P)
    assert not markov.is_reversible(P)
    assert torch.allclose(reverse.sum(-1), torch.ones(P.shape[0], dtype=F64), atol=1e-14)
    for path in itertools.product(range(P.shape[0]), repeat=steps + 1):
        forward = pi[path[0]] * math.prod(P[a, b] for a, b in zip(path, path[1:]))
        backward = pi[path[-1]] * math.prod(reverse[b, a] for a, b in zip(path, path[1:]))
        assert abs(float(forward - backward)) < 1e-15


def test_n_step_and_simulation_follow_the_matrix_powers():
    P = random_stochastic(4, 5, zeros=True)
    assert torch.allclose(markov.n_step(P, 5), P @ P @ P @ P @ P, atol=1e-15)
    assert torch.equal(markov.n_step(P, 0), torch.eye(4, dtype=F64))
    gen = torch.Generator().manual_seed(6)
    num = 20_000
    paths = markov.simulate(P, torch.full((num,), 1), 5, generator=gen)
    assert paths.shape == (num, 6) and bool((paths[:, 0] == 1).all())
    assert bool((P[paths[:, :-1], paths[:, 1:]] > 0).all())  # no impossible step
    empirical = torch.bincount(paths[:, -1], minlength=4).double() / num
    # E[TV] <= 0.5 sum_y sqrt(p_y / num) <= 0.5 sqrt(4 / num) = 0.007; TV moves by <= 1/num per draw
    # (McDiarmid), so TV > 0.021 has probability < exp(-2 num 0.014^2) = 4e-4
    assert 0.5 * (empirical - markov.n_step(P, 5)[1]).abs().sum() < 0.021
    again = markov.simulate(P, torch.full((num,), 1), 5, generator=torch.Generator().manual_seed(6))
    assert torch.equal(paths, again)


def test_asymptotic_variance_is_the_limit_of_n_var_of_the_mean():
    P, f = random_stochastic(4, 7, zeros=True), torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    pi = markov.stationary_distribution(P)
    centred = f - pi @ f
    # autocovariances gamma_k = E_pi[f~(X_0) f~(X_k)] from matrix powers; sigma^2 = gamma_0 + 2 sum_k gamma_k
    gammas, power = [], torch.eye(4, dtype=F64)
    for _ in range(400):
        gammas.append(float(pi @ (centred * (power @ centred))))
        power = power @ P
    assert abs(gammas[-1]) < 1e-16  # the series has converged
    assert markov.asymptotic_variance(P, f) == pytest.approx(gammas[0] + 2 * sum(gammas[1:]), rel=1e-10)


def test_ergodic_averages_converge_within_five_clt_standard_errors():
    P, f = BIASED_CYCLE, torch.tensor([1.0, 0.0, 4.0], dtype=F64)
    pi = markov.stationary_distribution(P)
    gen = torch.Generator().manual_seed(8)
    paths, n = 400, 2_000
    averages = markov.ergodic_average(f, markov.simulate(P, torch.zeros(paths, dtype=torch.long), n - 1, generator=gen))
    sigma2 = markov.asymptotic_variance(P, f)
    # the mean of 400 independent ergodic averages over n steps: standard error sqrt(sigma^2 / (n paths));
    # the start at 0 instead of pi biases each average by O(1 / n) (here < 1e-3, within the tolerance)
    assert abs(averages.mean().item() - float(pi @ f)) < 5 * math.sqrt(sigma2 / (n * paths))
    # and their spread is the CLT's: n Var(average) ~ sigma^2 (chi-square with 399 d.o.f.: +-5 sd = +-35%)
    assert n * averages.var().item() == pytest.approx(sigma2, rel=0.35)


@pytest.mark.parametrize("P", [random_stochastic(5, 9), BIASED_CYCLE, birth_death(4)], ids=["random-5", "cycle", "birth-death"])
def test_return_times_equal_one_over_pi(P):
    pi = markov.stationary_distribution(P)
    assert torch.allclose(markov.return_times(P), 1 / pi, rtol=1e-12, atol=0)
    x, num = int(pi.argmax()), 20_000
    paths = markov.simulate(P, torch.full((num,), x), 120, generator=torch.Generator().manual_seed(10))
    back = paths[:, 1:] == x
    assert bool(back.any(-1).all())  # every path returned within 120 steps
    times = back.double().argmax(-1) + 1.0
    assert abs(times.mean().item() - 1 / pi[x].item()) < 5 * times.std().item() / math.sqrt(num)


def test_hitting_times_of_the_gamblers_ruin():
    N = 6  # simple symmetric walk on {0..N} absorbed at 0 and N: E_k[time] = k (N - k)
    P = torch.zeros(N + 1, N + 1, dtype=F64)
    P[0, 0] = P[N, N] = 1
    for k in range(1, N):
        P[k, k - 1] = P[k, k + 1] = 0.5
    expected = torch.tensor([k * (N - k) for k in range(N + 1)], dtype=F64)
    assert torch.allclose(markov.hitting_times(P, [0, N]), expected, atol=1e-12)
    # one end only: reached a.s. from 0..N-1 except that N absorbs, so every k in 1..N has +inf
    one_end = markov.hitting_times(P, 0)
    assert one_end[0] == 0 and bool(torch.isinf(one_end[1:]).all())


def test_hitting_and_return_times_of_a_reducible_chain():
    h = markov.hitting_times(REDUCIBLE, 4)  # 2 and 3 may fall into {0, 1} and never reach 4
    assert h[4] == 0 and bool(torch.isinf(h[:4]).all())
    r = markov.return_times(REDUCIBLE)
    assert r[0] == pytest.approx(14 / 9, rel=1e-12) and r[1] == pytest.approx(14 / 5, rel=1e-12) and r[4] == 1
    assert bool(torch.isinf(r[2:4]).all())  # transient


# ------------------------------------------------------------------------------ continuous time
def random_rates(S, seed):
    gen = torch.Generator().manual_seed(seed)
    Q = torch.rand(S, S, generator=gen, dtype=F64) * 2
    Q.fill_diagonal_(0)
    return Q - torch.diag(Q.sum(-1))


@pytest.mark.parametrize("graph", [ddlm.Uniform(4), ddlm.Absorbing(3)], ids=repr)
def test_ctmc_transition_is_the_processes_closed_form(graph):
    Q = graph.rate_matrix()
    sigma = torch.tensor([0.01, 0.7, 3.0], dtype=F64)
    states = torch.arange(graph.num_states)
    exact = graph.transition(states.expand(3, -1), sigma[:, None])  # [3, S, S]
    assert torch.allclose(markov.ctmc_transition(Q, sigma), exact, rtol=0, atol=1e-13)


def test_ctmc_stationary_distribution_and_reversed_generator():
    Q = random_rates(4, 11)
    pi = markov.ctmc_stationary_distribution(Q)
    assert torch.allclose(pi @ Q, torch.zeros(4, dtype=F64), atol=1e-14)
    reverse = markov.ctmc_reversed(Q)
    assert torch.allclose(reverse.sum(-1), torch.zeros(4, dtype=F64), atol=1e-14)
    assert torch.allclose(pi @ reverse, torch.zeros(4, dtype=F64), atol=1e-14)
    # stationary two-time laws: pi(a) exp(tQ)[a, b] = pi(b) exp(tQ^)[b, a]
    for t in (0.1, 0.8, 3.0):
        joint = pi[:, None] * markov.ctmc_transition(Q, t)
        assert torch.allclose(joint, (pi[:, None] * markov.ctmc_transition(reverse, t)).T, atol=1e-14)
    uniformized, rate = markov.uniformize(Q)
    assert rate == pytest.approx(float(-Q.diagonal().min()))
    assert torch.allclose(markov.reversed_chain(uniformized), torch.eye(4, dtype=F64) + reverse / rate, atol=1e-14)
    birth_death_rates = birth_death(5) - torch.eye(5, dtype=F64)
    assert torch.allclose(markov.ctmc_reversed(birth_death_rates), birth_death_rates, atol=1e-14)


def test_gillespie_matches_exp_tq():
    Q = random_rates(4, 12)
    Q[3] = 0.0  # an absorbing state: paths that reach it stop jumping
    num, times = 20_000, torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=F64)
    paths = markov.gillespie(Q, torch.full((num,), 1), 2.5, generator=torch.Generator().manual_seed(13))
    finite = torch.isfinite(paths.times)
    assert bool((paths.times[finite] <= 2.5).all()) and bool((paths.times.diff(dim=1)[finite[:, 1:]] > 0).all())
    moved = finite[:, 1:]
    assert bool((paths.states[:, 1:][moved] != paths.states[:, :-1][moved]).all())  # every jump changes state
    exact = markov.ctmc_transition(Q, times)[:, 1]  # [T, S]
    at = paths.at(times)
    for j in range(times.numel()):
        empirical = torch.bincount(at[:, j], minlength=4).double() / num
        assert 0.5 * (empirical - exact[j]).abs().sum() < 0.021  # as for simulate: E[TV] <= 0.007, McDiarmid
    assert torch.equal(paths.at(times), markov.gillespie(Q, torch.full((num,), 1), 2.5, generator=torch.Generator().manual_seed(13)).at(times))


@pytest.mark.parametrize("graph", [ddlm.Uniform(3), ddlm.Absorbing(2)], ids=repr)
def test_reverse_rates_are_the_samplers_reverse_rates(graph):
    noise, Q = ddlm.LogLinear(), graph.rate_matrix()
    p0 = torch.tensor([0.5, 0.2, 0.3], dtype=F64) if graph.mask_id is None else torch.tensor([0.6, 0.4, 0.0], dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    p_t = p0 @ markov.ctmc_transition(Q, noise.total(t))
    reverse = markov.reverse_rates(noise.rate(t) * Q, p_t)
    states = torch.arange(graph.num_states)
    ratios = p_t[None, :] / p_t[:, None]  # s_y at current state x: the exact ratios of one token
    sampler = graph.reverse_rate(states, ratios, noise.rate(t).expand(graph.num_states))
    assert torch.allclose(reverse - torch.diag(torch.diagonal(reverse)), sampler, atol=1e-13)


def scheduled(graph, noise, p0):
    """Forward rates t -> sigma(t) Q and the exact marginals t -> p0 exp(sigma_bar(t) Q) of one token."""
    Q = graph.rate_matrix()

    def rates(t):
        return noise.rate(torch.tensor(t, dtype=F64)) * Q

    def marginal(t):
        return p0 @ markov.ctmc_transition(Q, noise.total(torch.tensor(t, dtype=F64)))

    return rates, marginal


def refined_grid(n):
    """[0, 1] with n uniform points plus n log-spaced towards each end (where sigma(t) or the reverse rates blow up)."""
    ends = torch.logspace(-10, 0, n, dtype=F64)
    return torch.unique(torch.cat([torch.zeros(1, dtype=F64), ends, 1 - ends, torch.linspace(0, 1, n, dtype=F64)]))


@pytest.mark.parametrize("graph", [ddlm.Uniform(3), ddlm.Absorbing(2)], ids=repr)
@pytest.mark.parametrize("noise", [ddlm.LogLinear(), ddlm.Geometric()], ids=repr)
def test_reverse_marginal_reproduces_the_forward_marginals(graph, noise):
    p0 = torch.tensor([0.1, 0.3, 0.6], dtype=F64) if graph.mask_id is None else torch.tensor([0.3, 0.7, 0.0], dtype=F64)
    rates, marginal = scheduled(graph, noise, p0)
    grid = refined_grid(40).flip(0)  # 118 steps from t = 1 to t = 0
    reversed_laws = markov.reverse_marginal(rates, marginal, marginal(1.0), grid)
    exact = torch.stack([marginal(t) for t in grid.tolist()])
    # measured max error over the grid (float64): 1.1e-5 (Absorbing + LogLinear), 6e-6 or less otherwise;
    # 4e-7 or less with refined_grid(80); the order is checked below
    assert (reversed_laws - exact).abs().max() < 2e-5
    if graph.mask_id is not None and float(noise.total(0.0)) == 0:  # LogLinear: the reversed chain unmasks all by t = 0
        assert reversed_laws[-1, -1] < 1e-10


def test_reverse_and_forward_marginals_converge_at_fourth_order():
    rates, marginal = scheduled(ddlm.Uniform(3), ddlm.Geometric(), torch.tensor([0.1, 0.3, 0.6], dtype=F64))
    errors = []
    for steps in (10, 20, 40):
        q = markov.reverse_marginal(rates, marginal, marginal(1.0), torch.linspace(1, 0, steps + 1, dtype=F64))[-1]
        errors.append(float((q - marginal(0.0)).abs().max()))
    assert errors[0] / errors[1] > 10 and errors[1] / errors[2] > 10 and errors[2] < 2e-6  # 2^4 = 16 per halving
    # a forward generator whose values do not commute: (1 - t) Qa + 3 t Qb
    Qa, Qb = random_rates(3, 14), random_rates(3, 15)
    p0 = torch.tensor([0.7, 0.2, 0.1], dtype=F64)
    reference = markov.evolve_marginal(lambda t: (1 - t) * Qa + 3 * t * Qb, p0, torch.linspace(0, 1, 321, dtype=F64))[-1]
    errors = [float((markov.evolve_marginal(lambda t: (1 - t) * Qa + 3 * t * Qb, p0, torch.linspace(0, 1, steps + 1, dtype=F64))[-1]
                     - reference).abs().max()) for steps in (5, 10, 20)]
    assert errors[0] / errors[1] > 12 and errors[1] / errors[2] > 12
    constant = markov.evolve_marginal(Qa, p0, torch.tensor([0.0, 0.7], dtype=F64))[-1]  # constant Q: one exact step
    assert torch.allclose(constant, p0 @ markov.ctmc_transition(Qa, 0.7), atol=1e-14)


# ------------------------------------------------------------------------------ Brownian motion
def assert_covariance(paths, times, expected, num):
    """E[W_s W_t] within 5 standard errors; Var(W_s W_t) = s t + min(s, t)^2 for Gaussian (smaller for +-1 walks)."""
    second = paths.T @ paths / num
    variance = torch.outer(times, times) + expected**2
    assert bool(((second - expected).abs() <= 5 * (variance / num).sqrt() + 1e-12).all())


def test_brownian_motion_has_covariance_min_s_t():
    times, num = torch.tensor([0.0, 0.1, 0.35, 0.5, 1.0, 2.0], dtype=F64), 20_000
    paths = brownian.brownian_motion(times, num, generator=torch.Generator().manual_seed(16))
    assert paths.shape == (num, 6) and bool((paths[:, 0] == 0).all())
    assert_covariance(paths, times, torch.minimum(times[:, None], times[None, :]), num)


@pytest.mark.parametrize("step", ["rademacher", "gaussian", "centred exponential"])
def test_scaled_random_walk_has_brownian_covariance(step):
    law = (lambda shape, gen: torch.empty(shape, dtype=F64).exponential_(generator=gen) - 1) if step == "centred exponential" else step
    times, num, n = torch.tensor([0.1, 0.25, 0.5, 0.75, 1.0], dtype=F64), 20_000, 100
    paths = brownian.scaled_random_walk(n, times, num, step=law, generator=torch.Generator().manual_seed(17))
    assert_covariance(paths, times, torch.minimum(times[:, None], times[None, :]), num)
    if step == "rademacher":  # S_k / sqrt(n) with k = n t: values on the lattice (k mod 2) / sqrt(n) + 2Z / sqrt(n)
        k = torch.round(n * times).long()
        assert bool(((paths * math.sqrt(n)).round() % 2 == k % 2).all())


def test_scaled_random_walk_exact_covariance_off_the_grid_and_interpolated():
    # n = 4: the step walk has Cov = floor(n min(s, t)) / n; the interpolated walk min(s, t) across cells
    times, num, n = torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=F64), 40_000, 4
    gen = torch.Generator().manual_seed(18)
    step = brownian.scaled_random_walk(n, times, num, generator=gen)
    floor = torch.floor(n * torch.minimum(times[:, None], times[None, :])) / n
    assert_covariance(step, times, floor, num)
    assert bool((step[:, 0] == 0).all())  # floor(0.4) = 0
    linear = brownian.scaled_random_walk(n, times, num, interpolate=True, generator=gen)
    cells = torch.floor(n * times)
    fractions = n * times - cells  # same cell k: Cov = (k + a_s a_t) / n
    same_cell = (cells[:, None] + fractions[:, None] * fractions[None, :]) / n
    exact = torch.where(cells[:, None] == cells[None, :], same_cell, torch.minimum(times[:, None], times[None, :]))
    assert_covariance(linear, times, exact, num)
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(exact[off_diagonal], torch.minimum(times[:, None], times[None, :])[off_diagonal])  # distinct cells


def test_scaled_random_walk_floor_is_robust_to_rounding():
    paths = brownian.scaled_random_walk(100, torch.tensor([0.29], dtype=F64), 3, generator=torch.Generator().manual_seed(19))
    # 100 * 0.29 = 28.999999999999996 in floating point; the walk uses 29 steps (odd: value * 10 is odd)
    assert bool(((paths * 10).round() % 2 == 1).all())


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad,match", [
    ([[0.5, 0.5]], "square"),
    ([[1.2, -0.2], [0.5, 0.5]], "non-negative"),
    ([[0.5, 0.6], [0.5, 0.5]], "sum to 1"),
    ([[math.nan, 1.0], [0.5, 0.5]], "non-finite"),
    (torch.zeros(0, 0), "non-empty"),
])
def test_bad_stochastic_matrices_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        markov.stationary_distribution(bad)


@pytest.mark.parametrize("bad,match", [
    ([[-1.0, 1.0], [-0.5, 0.5]], "off-diagonal"),
    ([[-1.0, 1.0], [0.5, -0.4]], "sum to 0"),
])
def test_bad_rate_matrices_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        markov.ctmc_transition(bad, 1.0)


def test_other_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="square matrix"):
        markov.check_stochastic("P")
    with pytest.raises(ValueError, match="pi > 0"):
        markov.reversed_chain(REDUCIBLE, pi=markov.stationary_distributions(REDUCIBLE)[0])
    with pytest.raises(ValueError, match="not stationary"):
        markov.reversed_chain(BIASED_CYCLE, pi=torch.tensor([0.5, 0.25, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="x0 must hold states"):
        markov.simulate(BIASED_CYCLE, 3, 4)
    with pytest.raises(ValueError, match="steps"):
        markov.simulate(BIASED_CYCLE, 0, -1)
    with pytest.raises(ValueError, match="n must be"):
        markov.n_step(BIASED_CYCLE, 1.5)
    with pytest.raises(ValueError, match="t must be"):
        markov.ctmc_transition(random_rates(3, 0), -1.0)
    with pytest.raises(ValueError, match="rate must be"):
        markov.uniformize(random_rates(3, 0), rate=0.1)
    with pytest.raises(ValueError, match="t_max"):
        markov.gillespie(random_rates(3, 0), 0, math.inf)
    with pytest.raises(ValueError, match="simulated up to t_max"):
        markov.gillespie(random_rates(3, 0), [0, 1], 1.0).at(1.5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        markov.reverse_marginal(random_rates(3, 0), lambda t: torch.full((3,), 1 / 3), torch.full((3,), 1 / 3), [0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2"):
        markov.evolve_marginal(random_rates(3, 0), torch.full((3,), 1 / 3), [0.0])
    with pytest.raises(ValueError, match="q must sum to 1"):
        markov.reverse_marginal(random_rates(3, 0), lambda t: torch.full((3,), 1 / 3), torch.ones(3), [1.0, 0.0])
    with pytest.raises(ValueError, match="target"):
        markov.hitting_times(BIASED_CYCLE, 5)
    with pytest.raises(ValueError, match="non-decreasing"):
        brownian.brownian_motion([0.5, 0.2], 3)
    with pytest.raises(ValueError, match="step must be one of"):
        brownian.scaled_random_walk(10, [0.5], 3, step="cauchy")
    with pytest.raises(ValueError, match="num_paths"):
        brownian.scaled_random_walk(10, [0.5], 0)
    with pytest.raises(ValueError, match="step law must return"):
        brownian.scaled_random_walk(10, [0.5], 3, step=lambda shape, gen: torch.zeros(2))
