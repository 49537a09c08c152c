"""Forward processes and schedules against dense matrix exponentials and closed forms."""

import math

import pytest
import torch

import ddlm

GRAPHS = [ddlm.Uniform(5), ddlm.Absorbing(4)]
SIGMAS = [0.0, 1e-7, 1e-3, 0.3, 2.0, 25.0]


def dense_exp(graph, sigma):
    return torch.linalg.matrix_exp(sigma * graph.rate_matrix())


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_rate_matrix_is_a_generator(graph):
    q = graph.rate_matrix()
    assert q.dtype == torch.float64 and q.shape == (graph.num_states, graph.num_states)
    assert torch.allclose(q.sum(1), torch.zeros(graph.num_states, dtype=torch.float64), atol=1e-15)
    off = q - torch.diag(torch.diag(q))
    assert bool((off >= 0).all())


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_transition_rows_and_columns_equal_matrix_exp(graph, sigma):
    x = torch.arange(graph.num_states)
    exact = dense_exp(graph, sigma)
    assert (graph.transition(x, sigma) - exact).abs().max() < 1e-10
    assert (graph.transition_into(x, sigma) - exact.T).abs().max() < 1e-10
    y = torch.arange(graph.num_states).repeat_interleave(graph.num_states)
    x_rep = x.repeat(graph.num_states)
    assert (graph.transition_prob(y, x_rep, sigma) - exact[y, x_rep]).abs().max() < 1e-10


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_transition_broadcasts_over_leading_shape(graph):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(graph.num_states, (2, 3, 4), generator=gen)
    sigma = torch.rand(2, 1, 4, generator=gen, dtype=torch.float64) * 3
    rows = graph.transition(x, sigma)
    assert rows.shape == (2, 3, 4, graph.num_states)
    for idx in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        exact = dense_exp(graph, sigma[idx[0], 0, idx[2]].item())[x[idx]]
        assert (rows[idx] - exact).abs().max() < 1e-10


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_float32_in_float32_out(graph):
    x = torch.arange(graph.num_states)
    rows = graph.transition(x, torch.tensor(0.5, dtype=torch.float32))
    assert rows.dtype == torch.float32
    assert torch.allclose(rows.double(), dense_exp(graph, 0.5), atol=1e-6)


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_rates_into_and_out_of_a_state(graph):
    q = graph.rate_matrix()
    off = q - torch.diag(torch.diag(q))
    x = torch.arange(graph.num_states)
    assert torch.equal(graph.rate_into(x), off.T)
    assert torch.equal(graph.rate_from(x), off)
    others = ~torch.eye(graph.num_states, dtype=torch.bool)
    common = graph.rate_into_value(x)[:, None].expand_as(off)
    assert torch.equal(off.T[others], common[others])  # one value of Q[y, x] over all y != x


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize("dsigma", [1e-4, 0.2, 1.5])
def test_staggered_score_is_exp_minus_dsigma_q_transposed(graph, dsigma):
    score = torch.rand(3, graph.num_states, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = score @ torch.linalg.matrix_exp(-dsigma * graph.rate_matrix())  # (exp(-dQ)^T s) as rows
    assert torch.allclose(graph.staggered_score(score, dsigma), exact, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize("sigma", [1e-6, 0.4, 6.0])
def test_conditional_ratio_is_a_ratio_of_transition_probabilities(graph, sigma):
    exact = dense_exp(graph, sigma)
    x0 = torch.arange(graph.num_tokens).repeat_interleave(graph.num_states)
    x_t = torch.arange(graph.num_states).repeat(graph.num_tokens)
    possible = exact[x0, x_t] > 0
    r = graph.ratio(x_t[possible], x0[possible], sigma)
    expected = exact[x0[possible]] / exact[x0[possible], x_t[possible]][:, None]
    assert torch.allclose(r, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_dse_coefficients_reproduce_ratio_and_weights(graph):
    sigma = 0.7
    x0 = torch.arange(graph.num_tokens).repeat_interleave(graph.num_states)
    x_t = torch.arange(graph.num_states).repeat(graph.num_tokens)
    possible = dense_exp(graph, sigma)[x0, x_t] > 0
    x0, x_t = x0[possible], x_t[possible]
    w, a, b = graph.dse_coefficients(x_t, x0, sigma)
    ratio, weight = graph.ratio(x_t, x0, sigma), graph.rate_into(x_t)
    others = torch.ones_like(ratio, dtype=torch.bool).scatter_(-1, x_t[:, None], False)
    assert torch.allclose(weight[others], w[:, None].expand_as(weight)[others])
    expected = torch.where(torch.arange(graph.num_states) == x0[:, None], b[:, None], a[:, None])
    carries_loss = others & (w[:, None] > 0)  # (a, b) only matter where the weight is positive
    assert bool(carries_loss.any())
    assert torch.allclose(ratio[carries_loss], expected[carries_loss], rtol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_sample_transition_frequencies(graph):
    gen = torch.Generator().manual_seed(2)
    n, sigma = 200_000, 0.8
    for start in [0, graph.num_states - 1]:
        x = torch.full((n,), start)
        freq = torch.bincount(graph.sample_transition(x, sigma, generator=gen), minlength=graph.num_states) / n
        expected = dense_exp(graph, sigma)[start].float()
        assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_sampling_is_reproducible(graph):
    x = torch.zeros(64, dtype=torch.long)
    a = graph.sample_transition(x, 1.0, generator=torch.Generator().manual_seed(5))
    b = graph.sample_transition(x, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    limit = graph.sample_limit(4, 7, generator=torch.Generator().manual_seed(5))
    assert limit.shape == (4, 7) and limit.dtype == torch.long
    assert int(limit.max()) < graph.num_states


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
@pytest.mark.parametrize("sigma", [0.01, 3.0, 20.0])
def test_prior_is_the_marginal_of_uniform_data_and_prior_kl_is_exact(graph, sigma):
    rows = dense_exp(graph, sigma)[: graph.num_tokens]
    prior = graph.prior(sigma)
    assert torch.allclose(prior, rows.mean(0), atol=1e-14)
    for x0 in range(graph.num_tokens):
        kl = (torch.xlogy(rows[x0], rows[x0]) - torch.xlogy(rows[x0], prior)).sum()
        assert abs(float(kl) - float(graph.prior_kl(sigma))) < 1e-12


def test_limits():
    u, a = ddlm.Uniform(6), ddlm.Absorbing(6)
    assert torch.equal(a.sample_limit(2, 3), torch.full((2, 3), 6))
    assert a.mask_id == 6 and a.num_states == 7 and u.num_states == 6 and u.mask_id is None
    assert torch.allclose(u.transition(torch.tensor([2]), 60.0), torch.full((1, 6), 1 / 6, dtype=torch.float64))


@pytest.mark.parametrize("graph", GRAPHS, ids=repr)
def test_bad_tokens_and_sigma_are_rejected(graph):
    x = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="x holds ids"):
        graph.transition(torch.tensor([0, graph.num_states]), 0.1)
    with pytest.raises(ValueError, match="x holds ids"):
        graph.transition(torch.tensor([-1]), 0.1)
    with pytest.raises(TypeError, match="integer"):
        graph.transition(torch.tensor([0.0]), 0.1)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        graph.transition(x, -0.1)
    with pytest.raises(ValueError, match="must broadcast"):
        graph.transition(x, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="must broadcast"):
        graph.transition(x, torch.ones(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        graph.transition(x, torch.tensor(1))


def test_absorbing_clean_data_must_be_real_tokens():
    g = ddlm.Absorbing(3)
    with pytest.raises(ValueError, match="mask id 3"):
        g.ratio(torch.tensor([3]), torch.tensor([3]), 0.5)


@pytest.mark.parametrize("noise", [ddlm.LogLinear(), ddlm.LogLinear(eps=1e-2), ddlm.Geometric(), ddlm.Geometric(1e-3, 5.0)], ids=repr)
def test_schedule_rate_is_the_derivative_of_total(noise):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    total = noise.total(t)
    (grad,) = torch.autograd.grad(total.sum(), t)
    assert torch.allclose(grad, noise.rate(t.detach()), rtol=1e-10)


def test_schedule_closed_forms():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    loglinear = ddlm.LogLinear(eps=1e-3)
    assert torch.allclose(-torch.expm1(-loglinear.total(t)), (1 - 1e-3) * t, atol=1e-15)  # masking prob linear in t
    geometric = ddlm.Geometric(1e-4, 20.0)
    assert math.isclose(geometric.total(0.0).item(), 1e-4, rel_tol=1e-12)
    assert math.isclose(geometric.total(1.0).item(), 20.0, rel_tol=1e-12)
    assert loglinear.total(0.25).dtype == torch.float64


def test_schedule_bad_input():
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        ddlm.LogLinear().total(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        ddlm.Geometric().rate(-0.1)
    with pytest.raises(ValueError, match="eps"):
        ddlm.LogLinear(eps=0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        ddlm.Geometric(1.0, 0.5)
    with pytest.raises(ValueError, match="num_tokens"):
        ddlm.Uniform(1)
