"""The Gaussian-mixture oracle against independent references: torch.distributions, autograd,
quadrature of the posterior mean, sample moments."""

import math

import pytest
import torch

from ddlm.continuous import VESDE, VPSDE, GaussianMixture, SubVPSDE


def random_covariances(k, d, seed):
    a = torch.randn(k, d, d, generator=torch.Generator().manual_seed(seed))
    return a @ a.transpose(1, 2) / d + 0.2 * torch.eye(d)


def reference_log_prob(weights, means, covs, x):
    comps = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    return torch.logsumexp(torch.log(weights) + comps.log_prob(x[:, None, :]), dim=1)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_noised_log_prob_matches_torch_distributions(sde):
    weights, covs = torch.tensor([0.2, 0.5, 0.3]), random_covariances(3, 3, 0)
    means = torch.randn(3, 3, generator=torch.Generator().manual_seed(9))
    gm = GaussianMixture(weights, means, covariances=covs)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)) * 2
    t = torch.rand(16, generator=torch.Generator().manual_seed(2))
    alpha, sigma = sde.alpha(t)[:, None, None, None], sde.sigma(t)[:, None, None, None]
    noised_covs = alpha**2 * covs + sigma**2 * torch.eye(3)
    for i in range(16):
        ref = reference_log_prob(weights, alpha[i, 0, 0] * means, noised_covs[i], x[i : i + 1])
        torch.testing.assert_close(gm.log_prob(x[i : i + 1], t[i : i + 1], sde), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm.log_prob(x), reference_log_prob(weights, means, covs, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("event", [(2,), (2, 2)])
def test_score_is_the_gradient_of_log_prob(event):
    d = math.prod(event)
    means = torch.randn(2, *event, generator=torch.Generator().manual_seed(8))
    gm = GaussianMixture([0.6, 0.4], means, covariances=random_covariances(2, d, 3))
    sde = VPSDE()
    x = torch.randn(8, *event, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    t = torch.linspace(0.0, 1.0, 8)
    (grad,) = torch.autograd.grad(gm.log_prob(x, t, sde).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), t, sde), grad, rtol=1e-12, atol=1e-12)


def test_posterior_mean_matches_quadrature():
    """E[x0 | x_t] of a 1-D mixture by brute-force quadrature over x0."""
    gm = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], stds=[0.5, 0.8])
    sde = VESDE(sigma_max=10.0)
    grid = torch.linspace(-9, 9, 200001)
    prior = gm.log_prob(grid[:, None]).exp()
    for t, x in [(0.3, -1.0), (0.6, 0.4), (0.9, 3.0)]:
        alpha, sigma = sde.alpha(torch.tensor(t)), sde.sigma(torch.tensor(t))
        likelihood = torch.exp(-0.5 * ((x - alpha * grid) / sigma) ** 2)
        expected = (grid * prior * likelihood).sum() / (prior * likelihood).sum()
        got = gm.posterior_mean(torch.tensor([[x]]), t, sde)
        assert got.item() == pytest.approx(expected.item(), abs=1e-8)


def test_sample_moments_and_reproducibility():
    covs = random_covariances(2, 3, 5)
    gm = GaussianMixture([0.25, 0.75], [[1.0, 0.0, -1.0], [-1.0, 2.0, 0.5]], covariances=covs)
    x = gm.sample(100000, generator=torch.Generator().manual_seed(0))
    mean, cov = gm.moments()
    assert (x.mean(0) - mean).abs().max() < 0.02
    assert (torch.cov(x.T) - cov).abs().max() < 0.03
    same = gm.sample(10, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(same, gm.sample(10, generator=torch.Generator().manual_seed(7)), rtol=0, atol=0)
    assert gm.sample(3, dtype=torch.float32).dtype == torch.float32


def test_moments_at_t_and_responsibilities():
    gm = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], stds=[0.5, 0.5])
    sde = VPSDE()
    mean, cov = gm.moments(0.4, sde)
    alpha, sigma = sde.alpha(torch.tensor(0.4)), sde.sigma(torch.tensor(0.4))
    assert mean.item() == pytest.approx(alpha.item() * 0.8, rel=1e-12)
    assert cov.item() == pytest.approx(alpha.item() ** 2 * (0.25 + 4 - 0.64) + sigma.item() ** 2, rel=1e-12)
    resp = gm.responsibilities(torch.tensor([[-2.0], [2.0]]))
    assert resp[0, 0] > 0.999 and resp[1, 1] > 0.999
    torch.testing.assert_close(resp.sum(1), torch.ones(2))


def test_diagonal_stds_and_event_shapes():
    means = torch.zeros(1, 2, 3)
    stds = torch.arange(1.0, 7.0).reshape(1, 2, 3)
    gm = GaussianMixture([1.0], means, stds=stds)
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(0.0, stds[0]).log_prob(x).sum((1, 2))
    torch.testing.assert_close(gm.log_prob(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm.score(x), -x / stds**2, rtol=1e-12, atol=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="exactly one of stds and covariances"):
        GaussianMixture([1.0], [[0.0]])
    with pytest.raises(ValueError, match="weights must be"):
        GaussianMixture([1.0, -1.0], [[0.0], [1.0]], stds=[1.0, 1.0])
    with pytest.raises(ValueError, match="means must be shaped"):
        GaussianMixture([1.0], [0.0], stds=[1.0])
    with pytest.raises(ValueError, match="covariances must be shaped"):
        GaussianMixture([1.0], [[0.0, 0.0]], covariances=torch.eye(2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], covariances=-torch.eye(2)[None])
    gm = GaussianMixture([1.0], [[0.0, 0.0]], stds=[1.0])
    with pytest.raises(ValueError, match=r"x must be shaped \[B, \*\(2,\)\]"):
        gm.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sde is required"):
        gm.score(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match=r"t must be 0-d or shaped \[B\] = \[3\]"):
        gm.score(torch.zeros(3, 2), torch.full((2,), 0.5), VPSDE())
