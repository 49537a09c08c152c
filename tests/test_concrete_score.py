"""Concrete score matching (ddlm.losses.concrete_score_matching): exact minimiser, denoising form by
enumeration (N = 3, L = 2), and the failure it does not guard against (non-positive ratio estimates)."""

import math

import pytest
import torch

import ddlm
from ddlm.losses import concrete_score_matching, score_entropy

F64 = torch.float64


def test_zero_exactly_at_the_ratio_with_gradient_two_w_s_minus_r():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(6, (40,), generator=gen)
    ratio = torch.rand(40, 6, generator=gen, dtype=F64) * 5
    weight = torch.rand(40, 6, generator=gen, dtype=F64)
    assert concrete_score_matching(ratio.clone(), x, ratio, weight).abs().max() == 0
    score = (ratio + 0.3 * torch.randn(40, 6, generator=gen, dtype=F64)).requires_grad_()
    loss = concrete_score_matching(score, x, ratio, weight)
    assert bool((loss > 0).all())
    loss.sum().backward()
    expected = 2 * weight * (score.detach() - ratio)
    expected[torch.arange(40), x] = 0  # the y = x term is excluded
    assert torch.allclose(score.grad, expected, rtol=0, atol=1e-14)
    terms = (score.detach() - ratio) ** 2
    terms[torch.arange(40), x] = 0
    assert torch.allclose(concrete_score_matching(score.detach(), x, ratio), terms.sum(-1), rtol=1e-14)  # weight None: 1


def all_sequences(num_states, length):
    grids = torch.meshgrid(*[torch.arange(num_states)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], -1)


def expected_csm(oracle, scores, sigma):
    """E_{x0, x_t}[sum_i CSM with conditional ratios] and E_{x_t ~ p_t}[sum_i CSM with marginal ratios].

    scores: [S^L, L, S] ratio estimates for every noised sequence (in all_sequences order); weights Q[y, x_t].
    """
    graph, length = oracle.graph, oracle.length
    noised = all_sequences(graph.num_states, length)
    x0 = oracle.sequences
    p0 = torch.exp(oracle.log_prob(x0))
    x0_rep, xt_rep = x0.repeat_interleave(noised.shape[0], 0), noised.repeat(x0.shape[0], 1)
    table_rows = torch.arange(noised.shape[0]).repeat(x0.shape[0])
    joint = p0.repeat_interleave(noised.shape[0]) * graph.transition_prob(x0_rep, xt_rep, sigma).prod(-1)
    keep = joint > 0
    conditional = graph.ratio(xt_rep[keep], x0_rep[keep], sigma)
    denoising = concrete_score_matching(scores[table_rows[keep]], xt_rep[keep], conditional, graph.rate_into(xt_rep[keep]))
    e_denoising = (joint[keep] * denoising.sum(-1)).sum()
    p_t = torch.exp(oracle.log_marginal(noised, sigma))
    marginal_ratio = torch.exp(oracle.score_fn(noised, torch.full((noised.shape[0],), sigma, dtype=F64)))
    e_marginal = (p_t * concrete_score_matching(scores, noised, marginal_ratio, graph.rate_into(noised)).sum(-1)).sum()
    return e_denoising, e_marginal, marginal_ratio


@pytest.mark.parametrize("graph", [ddlm.Uniform(3), ddlm.Absorbing(3)], ids=repr)
@pytest.mark.parametrize("sigma", [0.1, 1.5])
def test_denoising_form_differs_from_the_marginal_form_by_a_constant(graph, sigma):
    gen = torch.Generator().manual_seed(1)
    oracle = ddlm.SequenceOracle.random(graph, 2, gen)
    shape = (graph.num_states**2, 2, graph.num_states)
    gaps = []
    for _ in range(3):  # unconstrained estimates, negative ones included
        e_denoising, e_marginal, exact = expected_csm(oracle, 2 * torch.randn(shape, generator=gen, dtype=F64), sigma)
        gaps.append(float(e_denoising - e_marginal))
    e_denoising, e_marginal, _ = expected_csm(oracle, exact, sigma)
    assert abs(float(e_marginal)) < 1e-12  # the marginal form vanishes at the exact ratios
    gaps.append(float(e_denoising - e_marginal))
    assert max(gaps) - min(gaps) < 1e-10 and min(gaps) > 0  # the constant: E[w Var(r | x_t)] > 0
    # the denoising form's gradient vanishes at the exact marginal ratios: its minimiser is the exact ratio
    scores = exact.clone().requires_grad_()
    expected_csm(oracle, scores, sigma)[0].backward()
    assert scores.grad.abs().max() < 1e-12


def test_csm_is_finite_where_score_entropy_is_not():
    x, ratio = torch.tensor([0]), torch.tensor([[1.0, 0.4, 2.0]], dtype=F64)
    at_zero = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64)  # estimate s_1 = 0 for r_1 = 0.4
    assert concrete_score_matching(at_zero, x, ratio).item() == pytest.approx(0.4**2, rel=1e-14)
    assert math.isinf(score_entropy(at_zero.log(), x, ratio).item())
    negative = torch.tensor([[1.0, -0.5, 2.0]], dtype=F64)
    assert concrete_score_matching(negative, x, ratio).item() == pytest.approx(0.9**2, rel=1e-14)
    assert not math.isfinite(score_entropy(negative.log(), x, ratio).item())  # log of a negative ratio: nan
    for s in (1e-2, 1e-4, 1e-8):  # score entropy s - r log s + r (log r - 1) grows like r log(1 / s); CSM -> r^2
        estimate = torch.tensor([[1.0, s, 2.0]], dtype=F64)
        se = score_entropy(estimate.log(), x, ratio).item()
        assert se == pytest.approx(s - 0.4 * math.log(s) + 0.4 * (math.log(0.4) - 1), rel=1e-12)
        assert concrete_score_matching(estimate, x, ratio).item() == pytest.approx((0.4 - s) ** 2, rel=1e-12)


def test_csm_with_a_linear_model_ends_at_negative_ratios_score_entropy_cannot():
    # one token, p = (0.6, 0.3, 0.09, 0.01); at state x ~ p the exact ratios are r_y = p(y) / p(x).
    # Model with two parameters: s_y(x) = a + b (y - x) for CSM (unconstrained, as CSM allows);
    # log s_y(x) = a + b (y - x) for score entropy (which needs s > 0). Neither can fit r exactly.
    p = torch.tensor([0.6, 0.3, 0.09, 0.01], dtype=F64)
    x = torch.arange(4)
    ratio = p[None, :] / p[:, None]
    weight = p[:, None].expand(4, 4)  # the expectation over x ~ p
    offset = (x[None, :] - x[:, None]).double()

    def fit(loss_of):
        theta = torch.zeros(2, dtype=F64, requires_grad=True)
        optimiser = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = loss_of(theta[0] + theta[1] * offset).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        return theta.detach()

    theta = fit(lambda s: concrete_score_matching(s, x, ratio, weight))
    csm_estimate = theta[0] + theta[1] * offset
    features = torch.stack([torch.ones(12, dtype=F64), offset[x[:, None] != x[None, :]]], -1)
    keep = x[:, None] != x[None, :]
    exact_fit = torch.linalg.lstsq(features * weight[keep].sqrt()[:, None], (ratio[keep] * weight[keep].sqrt())[:, None]).solution.squeeze()
    assert torch.allclose(theta, exact_fit, atol=1e-8)  # the optimiser found the weighted least-squares fit
    assert csm_estimate[0, 3] < -1  # the most likely state's smallest ratio (1/60) is estimated negative
    assert math.isfinite(concrete_score_matching(csm_estimate, x, ratio, weight).sum().item())
    assert not math.isfinite(score_entropy(csm_estimate.log(), x, ratio, weight).sum().item())

    theta = fit(lambda log_s: score_entropy(log_s, x, ratio, weight))
    se_estimate = torch.exp(theta[0] + theta[1] * offset)
    assert bool((se_estimate > 0).all()) and se_estimate[0, 3] < 0.5  # positive, and small where r is small
