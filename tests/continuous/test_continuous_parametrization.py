"""Parametrisations: exact round trips, Tweedie = exact posterior mean, PF drift = flow velocity."""

import itertools

import pytest
import torch

from ddlm.continuous import (
    PREDICTIONS,
    VESDE,
    VPSDE,
    GaussianMixture,
    OrnsteinUhlenbeck,
    RectifiedFlow,
    SubVPSDE,
    as_score_fn,
    convert,
    tweedie,
)

SDES = [VPSDE(), SubVPSDE(), VESDE(), OrnsteinUhlenbeck(theta=2.0), RectifiedFlow()]
IDS = ["vp", "subvp", "ve", "ou", "rectified"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("source,target", list(itertools.permutations(PREDICTIONS, 2)))
def test_round_trips_are_exact(sde, source, target):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 3, generator=gen)
    out = torch.randn(6, 2, 3, generator=gen)
    t = torch.linspace(0.1, 0.9, 6)
    back = convert(convert(out, x, t, sde, source, target), x, t, sde, target, source)
    torch.testing.assert_close(back, out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_conversions_from_the_true_pair(sde):
    """From (x0, eps) and x_t = alpha x0 + sigma eps every kind is its defining formula."""
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    t = torch.linspace(0.2, 0.8, 5)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    da, ds = sde.d_alpha(t)[:, None], sde.d_sigma(t)[:, None]
    x_t = a * x0 + s * eps
    truth = {"score": -eps / s, "eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}
    for source, target in itertools.product(PREDICTIONS, PREDICTIONS):
        got = convert(truth[source], x_t, t, sde, source, target)
        torch.testing.assert_close(got, truth[target], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)], ids=["vp", "subvp", "ve"])
def test_tweedie_equals_exact_posterior_mean(sde):
    """notes §5.1: 2-D, 2 components, t in {0.05, 0.3, 0.8}; measured agreement 2.3e-14."""
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]])
    gm = GaussianMixture([0.4, 0.6], [[1.0, -1.0], [-1.5, 0.5]], covariances=covs)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(2)) * 2
    for t in (0.05, 0.3, 0.8):
        tt = torch.full((30,), t)
        torch.testing.assert_close(tweedie(x, gm.score(x, tt, sde), tt, sde), gm.posterior_mean(x, tt, sde),
                                   rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), OrnsteinUhlenbeck(theta=1.5)], ids=["vp", "subvp", "ou"])
def test_probability_flow_drift_is_the_flow_velocity(sde):
    """f x - 1/2 g^2 score = alpha' x0_hat + sigma' eps_hat with the exact score (notes: 5e-15)."""
    gm = GaussianMixture([0.5, 0.5], [[1.0, 1.0], [-1.0, 0.0]], stds=[0.4, 0.7])
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0.05, 0.95, 20)
    score = gm.score(x, t, sde)
    torch.testing.assert_close(sde.probability_flow_drift(x, t, score), convert(score, x, t, sde, "score", "velocity"),
                               rtol=1e-11, atol=1e-11)


def test_as_score_fn_wraps_eps_models():
    sde = VPSDE()
    eps_model = lambda x, t: 0.5 * x + t[:, None]  # noqa: E731
    score_fn = as_score_fn(eps_model, sde, "eps")
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(score_fn(x, t), -eps_model(x, t) / sde.sigma(t)[:, None])
    assert as_score_fn(eps_model, sde, "score") is eps_model


def test_bad_inputs():
    sde, x = VPSDE(), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="source must be one of"):
        convert(x, x, 0.5, sde, "noise", "score")
    with pytest.raises(ValueError, match="target must be one of"):
        convert(x, x, 0.5, sde, "eps", "sample")
    with pytest.raises(ValueError, match="output must have the shape of x_t"):
        convert(torch.zeros(3, 3), x, 0.5, sde, "eps", "score")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        convert(x, x, 2.0, sde, "eps", "score")
    with pytest.raises(ValueError, match="prediction must be one of"):
        as_score_fn(lambda x, t: x, sde, "epsilon")
