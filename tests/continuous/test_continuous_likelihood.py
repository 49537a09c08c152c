"""PF-ODE likelihood against exact Gaussian log-densities (notes §5.3): 1e-4 with the true terminal
density as prior; Hutchinson estimates within 4 standard errors, errors shrinking as 1/sqrt(K)."""

import math

import pytest
import torch

from ddlm.continuous import (
    VESDE,
    VPSDE,
    GaussianMixture,
    RectifiedFlow,
    SubVPSDE,
    bits_per_dim,
    convert,
    divergence,
    log_likelihood,
    ode_log_likelihood,
)


@pytest.fixture
def gaussian_2d():
    """Correlated 2-D Gaussian with a non-zero mean (VP's PF drift is then not trivially 0)."""
    return GaussianMixture([1.0], [[1.0, -0.5]], covariances=[[[0.6, 0.25], [0.25, 0.4]]])


def points(gauss, n=6, seed=0):
    return gauss.sample(n, generator=torch.Generator().manual_seed(seed))


def true_prior(gauss, sde):
    return lambda z: gauss.log_prob(z, torch.ones(z.shape[0]), sde)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)], ids=["vp", "subvp", "ve"])
def test_exact_divergence_with_true_prior_is_exact(gaussian_2d, sde):
    x = points(gaussian_2d)
    result = log_likelihood(gaussian_2d.score_fn(sde), sde, x, prior_log_prob=true_prior(gaussian_2d, sde),
                            t_min=0.0, rtol=1e-7, atol=1e-7)
    assert (result.log_prob - gaussian_2d.log_prob(x)).abs().max() < 1e-4
    assert torch.all(result.stderr == 0) and result.latent.shape == x.shape and result.nfe > 0


def test_event_shapes_and_fixed_step_solver():
    cov = torch.tensor([[1.0, 0.3, 0.0, 0.1], [0.3, 0.7, 0.2, 0.0], [0.0, 0.2, 0.5, 0.1], [0.1, 0.0, 0.1, 0.9]])
    gauss = GaussianMixture([1.0], torch.tensor([[[0.5, -1.0], [0.0, 1.0]]]), covariances=cov[None])
    sde = VPSDE()
    x = points(gauss, 4)
    assert x.shape == (4, 2, 2)
    result = log_likelihood(gauss.score_fn(sde), sde, x, prior_log_prob=true_prior(gauss, sde), t_min=0.0,
                            method="rk4", steps=50)
    assert (result.log_prob - gauss.log_prob(x)).abs().max() < 1e-4


def test_default_prior_error_is_the_prior_mismatch(gaussian_2d):
    """With the N(0, I) prior, VP is off by about alpha(1) |mu| |z| (notes: 7e-3), not by 1e-4."""
    sde = VPSDE()
    x = points(gaussian_2d)
    result = log_likelihood(gaussian_2d.score_fn(sde), sde, x, t_min=0.0, rtol=1e-7, atol=1e-7)
    error = (result.log_prob - gaussian_2d.log_prob(x)).abs().max().item()
    assert 1e-4 < error < 0.05


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(gaussian_2d, probe):
    """K = 256 probes: every estimate within 4 of its reported standard errors of the exact value."""
    sde = VPSDE()
    x = points(gaussian_2d, 3)
    result = log_likelihood(gaussian_2d.score_fn(sde), sde, x, prior_log_prob=true_prior(gaussian_2d, sde),
                            t_min=0.0, hutchinson=probe, probes=256, generator=torch.Generator().manual_seed(0))
    assert torch.all((result.log_prob - gaussian_2d.log_prob(x)).abs() < 4 * result.stderr + 1e-4)
    assert torch.all(result.stderr > 0)


def test_hutchinson_error_shrinks_as_one_over_sqrt_probes(gaussian_2d):
    """Rademacher probes (two-valued estimates in 2-D, so the spread estimate is stable): SE(64)/SE(256) = 2;
    a single probe reports nan and is reproducible from its generator."""
    sde = VPSDE()
    x = points(gaussian_2d, 3)
    kwargs = dict(prior_log_prob=true_prior(gaussian_2d, sde), t_min=0.0, hutchinson="rademacher")
    score = gaussian_2d.score_fn(sde)
    few = log_likelihood(score, sde, x, probes=64, generator=torch.Generator().manual_seed(1), **kwargs)
    many = log_likelihood(score, sde, x, probes=256, generator=torch.Generator().manual_seed(0), **kwargs)
    ratio = few.stderr / many.stderr
    assert torch.all((ratio > 1.5) & (ratio < 2.7)), ratio
    single = log_likelihood(score, sde, x, generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.isnan(single.stderr).all()
    again = log_likelihood(score, sde, x, generator=torch.Generator().manual_seed(2), **kwargs)
    torch.testing.assert_close(again.log_prob, single.log_prob, rtol=0, atol=0)


def test_flow_matching_velocity_likelihood(gaussian_2d):
    """ode_log_likelihood takes any velocity: the exact rectified-flow velocity gives log p_0 (notes: 1e-6).
    The exact velocity divides by alpha = 1 - t, so integrate to t_max = 0.999 with p_{t_max} as prior."""
    sde, t_max = RectifiedFlow(), 0.999

    def velocity(x, t):
        return convert(gaussian_2d.score(x, t, sde), x, t, sde, "score", "velocity")

    def prior(z):
        return gaussian_2d.log_prob(z, torch.full((z.shape[0],), t_max), sde)

    x = points(gaussian_2d)
    result = ode_log_likelihood(velocity, x, prior, t_min=0.0, t_max=t_max, rtol=1e-8, atol=1e-8)
    assert (result.log_prob - gaussian_2d.log_prob(x)).abs().max() < 1e-4


def test_divergence_exact_and_hutchinson():
    a = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 0.3], [0.0, 0.2, 3.0]])
    fn = lambda x, t: torch.sin(x) @ a.T  # noqa: E731
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    expected = (torch.diagonal(a) * torch.cos(x)).sum(1)
    torch.testing.assert_close(divergence(fn, x, 0.5), expected, rtol=1e-12, atol=1e-12)
    probe = torch.tensor([[1.0, 0.0, 0.0]]).expand(5, 3)
    torch.testing.assert_close(divergence(fn, x, 0.5, probe=probe), a[0, 0] * torch.cos(x[:, 0]))


def test_bits_per_dim():
    log_prob = torch.tensor([-10.0 * math.log(2), 0.0])
    torch.testing.assert_close(bits_per_dim(log_prob, 5), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(bits_per_dim(log_prob, 5, offset=7.0), torch.tensor([9.0, 7.0]))


def test_bad_inputs(gaussian_2d):
    sde = VPSDE()
    x = points(gaussian_2d, 2)
    score = gaussian_2d.score_fn(sde)
    with pytest.raises(ValueError, match="hutchinson must be one of"):
        log_likelihood(score, sde, x, hutchinson="sphere")
    with pytest.raises(ValueError, match="probes > 1 needs a Hutchinson estimator"):
        log_likelihood(score, sde, x, probes=4)
    with pytest.raises(ValueError, match="method must be one of"):
        log_likelihood(score, sde, x, method="rk45")
    with pytest.raises(ValueError, match="t_min must be smaller than t_max"):
        log_likelihood(score, sde, x, t_min=1.0)
    with pytest.raises(ValueError, match="prior_log_prob must map"):
        log_likelihood(score, sde, x, prior_log_prob=lambda z: z.sum(), method="euler", steps=2)
    with pytest.raises(ValueError, match="probe must have the shape of x"):
        divergence(score, x, 0.5, probe=torch.ones(2, 3))
    with pytest.raises(ValueError, match="num_dims must be a positive int"):
        bits_per_dim(torch.zeros(2), 0)
