"""The likelihood bound against exact -log p(x0) of a known distribution."""

import pytest
import torch

import ddlm
from ddlm.likelihood import T_SAMPLING, nll_bound, sample_times

GRAPHS = [ddlm.Absorbing(3), ddlm.Uniform(3)]


def oracle_and_data(graph, seed=21):
    gen = torch.Generator().manual_seed(seed)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    return oracle, oracle.sequences[torch.tensor([0, 5, 13, 26])], gen


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_bound_with_exact_ratios_and_exact_terminal_marginal_is_the_nll(graph):
    noise = ddlm.LogLinear()
    oracle, x0, gen = oracle_and_data(graph)
    terminal = float(noise.total(1.0))
    result = nll_bound(oracle.score_fn, graph, noise, x0, num_t=2048, generator=gen, batch_size=4 * 2048,
                       base=lambda x_T: oracle.log_marginal(x_T, terminal))
    true_nll = -oracle.log_prob(x0)
    assert bool(((result.bound - true_nll).abs() <= 3 * result.stderr).all())
    assert bool((result.stderr < 0.1 * true_nll).all())  # informative, not vacuous


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_bound_with_the_default_base_is_an_upper_bound(graph):
    noise = ddlm.LogLinear()
    oracle, x0, gen = oracle_and_data(graph, seed=22)
    result = nll_bound(oracle.score_fn, graph, noise, x0, num_t=2048, generator=gen, batch_size=4 * 2048)
    assert bool((result.bound + 3 * result.stderr >= -oracle.log_prob(x0)).all())
    assert torch.allclose(result.prior, graph.prior_kl(noise.total(1.0)) * 3)
    assert torch.allclose(result.ppl, torch.exp(result.bound / 3))
    per_token_base = nll_bound(oracle.score_fn, graph, noise, x0, num_t=4, generator=gen, base=graph.prior(noise.total(1.0)))
    assert torch.allclose(per_token_base.prior, result.prior)


@pytest.mark.parametrize("method", T_SAMPLING)
def test_reported_standard_error_matches_the_spread_of_repeated_estimates(method):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle, x0, gen = oracle_and_data(graph, seed=23)
    x0 = x0[:1].expand(200, 3)  # 200 independent estimates of the same sequence
    result = nll_bound(oracle.score_fn, graph, noise, x0, num_t=32, generator=gen, t_sampling=method, batch_size=200 * 32)
    spread, reported = result.bound.std(), result.stderr.mean()
    assert 0.75 < float(spread / reported) < 1.33


@pytest.mark.parametrize("method", T_SAMPLING)
@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_sample_times_integrate_exactly(method, power):
    t, weight = sample_times(500, 64, method, power, torch.Generator().manual_seed(0))
    assert t.shape == (500, 64) and bool((t > 0).all()) and bool((t <= 1).all())
    # integral_0^1 3 t^2 dt = 1 through the change of variables
    estimate = (3 * t**2 * weight).mean()
    assert abs(float(estimate) - 1) < 0.02
    u = t ** (1 / power)
    if method == "stratified":
        strata = torch.arange(32).repeat_interleave(2)
        assert torch.equal(torch.floor(u * 32).clamp(max=31).long()[0], strata)
    if method == "antithetic":
        assert torch.allclose(u[:, 0::2] + u[:, 1::2], torch.ones(500, 32, dtype=torch.float64))


def test_likelihood_bad_input():
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle, x0, _ = oracle_and_data(graph)
    with pytest.raises(ValueError, match="num_t must be an even int"):
        nll_bound(oracle.score_fn, graph, noise, x0, num_t=7)
    with pytest.raises(ValueError, match="num_t must be an int >= 2"):
        nll_bound(oracle.score_fn, graph, noise, x0, num_t=1, t_sampling="iid")
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        nll_bound(oracle.score_fn, graph, noise, x0, t_sampling="sobol")
    with pytest.raises(ValueError, match="mask id"):
        nll_bound(oracle.score_fn, graph, noise, torch.full((1, 3), 3))
    with pytest.raises(ValueError, match="x0 must be Long"):
        nll_bound(oracle.score_fn, graph, noise, x0[0])
    with pytest.raises(ValueError, match="probability vector"):
        nll_bound(oracle.score_fn, graph, noise, x0, num_t=2, base=torch.ones(3))
    with pytest.raises(ValueError, match="t_power"):
        nll_bound(oracle.score_fn, graph, noise, x0, t_power=0.5)
