"""Losses against analytic identities: DSM - ISM constant, SSM unbiased for ISM, DSM / CFM minimised
at the exact score / velocity (Pythagorean identity), DDPM KL weights and a tight ELBO."""

import math

import pytest
import torch

from ddlm.continuous import (
    VPSDE,
    GaussianMixture,
    RectifiedFlow,
    SubVPSDE,
    cfm_loss,
    convert,
    ddpm_elbo,
    ddpm_loss,
    dsm_loss,
    esm_loss,
    ism_loss,
    ssm_loss,
)

N = 20000


def within(diff, target, z=4.0):
    """Mean of per-sample values within z standard errors of target."""
    mean, se = diff.mean().item(), diff.std().item() / math.sqrt(diff.numel())
    assert abs(mean - target) < z * se, f"mean {mean:.5f} vs {target:.5f} (SE {se:.5f})"


def nonlinear_model(dim, seed):
    """s(x) = A x + b * tanh(x) with a non-symmetric A; tr ds/dx = tr A + sum_i b_i (1 - tanh^2 x_i)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = 0.5 * torch.randn(dim, dim, generator=gen), 0.3 * torch.randn(dim, generator=gen)

    def score(x, t):
        return x @ a.T + torch.tanh(x) * b

    def trace(x):
        return torch.diagonal(a).sum() + ((1 - torch.tanh(x) ** 2) * b).sum(1)

    return score, trace


@pytest.fixture
def mixture_3d():
    return GaussianMixture([0.4, 0.6], [[1.0, 0.0, -1.0], [-1.0, 1.0, 0.5]], stds=[0.5, 0.8])


def test_ism_trace_is_exact():
    score, trace = nonlinear_model(3, 0)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    expected = 0.5 * (score(x, None) ** 2).sum(1) + trace(x)
    torch.testing.assert_close(ism_loss(score, x, 0.5), expected, rtol=1e-12, atol=1e-12)


def test_ism_on_event_shapes_equals_flat():
    score, _ = nonlinear_model(4, 2)
    x = torch.randn(7, 2, 2, generator=torch.Generator().manual_seed(3))
    shaped = ism_loss(lambda y, t: score(y.reshape(-1, 4), t).reshape(y.shape), x, 0.3)
    torch.testing.assert_close(shaped, ism_loss(score, x.reshape(7, 4), 0.3))


def test_dsm_minus_ism_is_the_stein_constant(mixture_3d):
    """E[DSM(lambda=1)] - E[ISM on p_t] = D / (2 sigma^2) for any model (notes §2.8: DSM/2 - ISM)."""
    sde, t, dim = VPSDE(), 0.3, 3
    gen = torch.Generator().manual_seed(4)
    x0 = mixture_3d.sample(N, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x_t, _ = sde.perturb(x0, t, noise=noise)
    sigma = sde.sigma(torch.tensor(t)).item()
    for seed in (0, 1):
        score, _ = nonlinear_model(dim, seed)
        diff = dsm_loss(score, sde, x0, t=t, weighting="none", noise=noise) - ism_loss(score, x_t, t)
        within(diff.detach(), dim / (2 * sigma**2))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("variance_reduced", [True, False])
def test_sliced_score_matching_is_unbiased_for_ism(probe, variance_reduced):
    score, _ = nonlinear_model(3, 5)
    x = torch.randn(N, 3, generator=torch.Generator().manual_seed(6)) * 1.5
    sliced = ssm_loss(score, x, 0.5, probe=probe, variance_reduced=variance_reduced,
                      generator=torch.Generator().manual_seed(7))
    within((sliced - ism_loss(score, x, 0.5)).detach(), 0.0)


def test_sliced_probes_average_and_reproduce():
    score, _ = nonlinear_model(3, 5)
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(6))
    exact = ism_loss(score, x, 0.5)
    one = ssm_loss(score, x, 0.5, generator=torch.Generator().manual_seed(1))
    many = ssm_loss(score, x, 0.5, probes=64, generator=torch.Generator().manual_seed(1))
    assert (many - exact).abs().mean() < 0.3 * (one - exact).abs().mean()
    again = ssm_loss(score, x, 0.5, probes=64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, many, rtol=0, atol=0)


def test_dsm_at_the_exact_score_of_gaussian_data():
    """Gaussian data N(0, s0^2 I): E[1/2 ||sigma s* + eps||^2] = D alpha^2 s0^2 / (2 v), v = alpha^2 s0^2 + sigma^2."""
    sde, t, s0, dim = VPSDE(), 0.2, 0.7, 4
    gauss = GaussianMixture([1.0], torch.zeros(1, dim), stds=[s0])
    x0 = gauss.sample(N, generator=torch.Generator().manual_seed(0))
    loss = dsm_loss(gauss.score_fn(sde), sde, x0, t=t, generator=torch.Generator().manual_seed(1))
    alpha, sigma = sde.alpha(torch.tensor(t)).item(), sde.sigma(torch.tensor(t)).item()
    v = alpha**2 * s0**2 + sigma**2
    within(loss, dim * alpha**2 * s0**2 / (2 * v))


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none", lambda t: 1 + t])
def test_dsm_is_minimised_at_the_exact_score(mixture_3d, weighting):
    """L(s) - L(s*) = E[1/2 lambda ||s - s*||^2] (Pythagoras) and L(c s*) > L(s*) for c = 0.9, 1.1."""
    sde = SubVPSDE()
    gen = torch.Generator().manual_seed(8)
    x0 = mixture_3d.sample(N, generator=gen)
    t = 0.05 + 0.95 * torch.rand(N, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    exact = mixture_3d.score_fn(sde)

    def loss(score_fn):
        return dsm_loss(score_fn, sde, x0, t=t, weighting=weighting, noise=noise)

    best = loss(exact)
    for scale in (0.9, 1.1):
        assert loss(lambda x, tt, c=scale: c * exact(x, tt)).mean() > best.mean()
    x_t, _ = sde.perturb(x0, t, noise=noise)
    shift = lambda x, tt: 0.3 * torch.tanh(x)  # noqa: E731
    lam = {"sigma2": sde.sigma(t) ** 2, "likelihood": sde.diffusion_sq(t), "none": torch.ones_like(t)}
    lam = lam[weighting] if isinstance(weighting, str) else weighting(t)
    gap = loss(lambda x, tt: exact(x, tt) + shift(x, tt)) - best
    within(gap - 0.5 * lam * (shift(x_t, t) ** 2).sum(1), 0.0)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", lambda t: 1 + t])
def test_esm_is_dsm_minus_a_constant(mixture_3d, weighting):
    """With common (x0, t, eps): DSM(s) - ESM(s) is the same for every s, namely DSM(s*) (ESM(s*) = 0),
    and E[DSM(s*)] = 1/2 E[lambda (D / sigma^2 - ||s*||^2)]; all within 4 Monte Carlo standard errors."""
    sde, dim = VPSDE(), 3
    gen = torch.Generator().manual_seed(10)
    x0 = mixture_3d.sample(N, generator=gen)
    t = 0.05 + 0.95 * torch.rand(N, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    exact = mixture_3d.score_fn(sde)

    def difference(score_fn):
        common = dict(t=t, weighting=weighting, noise=noise)
        return dsm_loss(score_fn, sde, x0, **common) - esm_loss(score_fn, exact, sde, x0, **common)

    assert esm_loss(exact, exact, sde, x0, t=t, noise=noise).abs().max() == 0
    best = dsm_loss(exact, sde, x0, t=t, weighting=weighting, noise=noise)
    first = difference(nonlinear_model(dim, 0)[0])
    within(first - difference(nonlinear_model(dim, 1)[0]), 0.0)
    within(first - best, 0.0)
    lam = {"sigma2": sde.sigma(t) ** 2, "likelihood": sde.diffusion_sq(t)}
    lam = lam[weighting] if isinstance(weighting, str) else weighting(t)
    x_t, _ = sde.perturb(x0, t, noise=noise)
    within(best - 0.5 * lam * (dim / sde.sigma(t) ** 2 - (exact(x_t, t) ** 2).sum(1)), 0.0)
    score = nonlinear_model(dim, 0)[0]
    by_hand = 0.5 * lam * ((score(x_t, t) - exact(x_t, t)) ** 2).sum(1)
    torch.testing.assert_close(esm_loss(score, exact, sde, x0, t=t, weighting=weighting, noise=noise), by_hand)


@pytest.mark.parametrize("sde", [RectifiedFlow(), VPSDE()], ids=["rectified", "vp"])
def test_cfm_is_minimised_at_the_exact_velocity(mixture_3d, sde):
    gen = torch.Generator().manual_seed(9)
    x0 = mixture_3d.sample(N, generator=gen)
    t = 0.05 + 0.9 * torch.rand(N, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)

    def exact(x, tt):
        return convert(mixture_3d.score(x, tt, sde), x, tt, sde, "score", "velocity")

    def loss(fn):
        return cfm_loss(fn, sde, x0, t=t, noise=noise)

    best = loss(exact)
    assert loss(lambda x, tt: 1.05 * exact(x, tt)).mean() > best.mean()
    x_t, _ = sde.perturb(x0, t, noise=noise)
    gap = loss(lambda x, tt: exact(x, tt) + 0.2 * torch.tanh(x)) - best
    within(gap - (0.04 * torch.tanh(x_t) ** 2).sum(1), 0.0)


def test_cfm_rectified_target_is_noise_minus_data():
    sde = RectifiedFlow()
    x0 = torch.randn(5, 3)
    noise = torch.randn(5, 3)
    zero = cfm_loss(lambda x, t: torch.zeros_like(x), sde, x0, t=0.4, noise=noise)
    torch.testing.assert_close(zero, ((noise - x0) ** 2).sum(1))


def test_ddpm_loss_uses_the_discrete_grid():
    sde, seen = VPSDE(), []

    def eps_fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    loss = ddpm_loss(eps_fn, sde, x0, steps=10, generator=torch.Generator().manual_seed(1))
    index = seen[0] * 10
    torch.testing.assert_close(index, index.round())
    assert index.min() == 1 and index.max() == 10
    within(loss, 2.0)  # ||eps||^2 summed over D = 2


def test_ddpm_transition_kl_matches_ho_et_al_weights():
    """KL of a step with fixed_small variance = beta^2 / (2 sigma^2 a (1 - abar)) ||eps - eps_hat||^2."""
    sde, steps = VPSDE(), 10
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    calls = []

    def eps_fn(x, t):
        calls.append((x.clone(), t.clone()))
        return 0.3 * x

    terms = ddpm_elbo(eps_fn, sde, x0, steps=steps, generator=torch.Generator().manual_seed(3))
    assert terms.transitions.shape == (6, steps - 1)
    abar = sde.alpha(torch.arange(steps + 1) / steps) ** 2
    for column, (x_t, t) in enumerate(calls[: steps - 1]):
        i = int(round(t[0].item() * steps))
        assert i == column + 2
        beta = 1 - abar[i] / abar[i - 1]
        var = (1 - abar[i - 1]) / (1 - abar[i]) * beta
        eps = (x_t - abar[i].sqrt() * x0) / (1 - abar[i]).sqrt()
        weight = beta**2 / (2 * var * (1 - beta) * (1 - abar[i]))
        torch.testing.assert_close(terms.transitions[:, column], weight * ((eps - 0.3 * x_t) ** 2).sum(1),
                                   rtol=1e-9, atol=1e-12)
    prior = 0.5 * (3 * (sde.sigma(1.0) ** 2 - 1 - torch.log(sde.sigma(1.0) ** 2)) + abar[-1] * (x0**2).sum(1))
    torch.testing.assert_close(terms.prior, prior)


def test_ddpm_elbo_is_tight_with_exact_reverse_kernels():
    """Gaussian data N(0, s0^2 I): with the exact reverse variance tau sigma_s^2 + (alpha_s tau)^2 Var[x0|x_t]
    the bound equals -log p(x0) (in expectation); with fixed_small it is a strict upper bound."""
    sde, s0, dim, steps = VPSDE(), 0.6, 2, 20
    gauss = GaussianMixture([1.0], torch.zeros(1, dim), stds=[s0])
    eps_fn = lambda x, t: convert(gauss.score(x, t, sde), x, t, sde, "score", "eps")  # noqa: E731

    def exact_variance(t, s):
        a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
        tau = 1 - (a_t * s_s / (a_s * s_t)) ** 2
        posterior_var = s0**2 * s_t**2 / (a_t**2 * s0**2 + s_t**2)
        return tau * s_s**2 + (a_s * tau) ** 2 * posterior_var

    x0 = gauss.sample(4000, generator=torch.Generator().manual_seed(0))
    nll = -gauss.log_prob(x0)
    tight = ddpm_elbo(eps_fn, sde, x0, steps=steps, variance=exact_variance, generator=torch.Generator().manual_seed(1))
    within(tight.total - nll, 0.0)
    loose = ddpm_elbo(eps_fn, sde, x0, steps=steps, generator=torch.Generator().manual_seed(1))
    gap = loose.total - nll
    assert gap.mean() > 10 * gap.std() / math.sqrt(gap.numel())
    large = ddpm_elbo(eps_fn, sde, x0, steps=steps, variance="fixed_large", generator=torch.Generator().manual_seed(1))
    assert (large.total - nll).mean() > 0


def test_losses_are_reproducible_and_shaped():
    sde = VPSDE()
    x0 = torch.randn(8, 2, 3)
    score = lambda x, t: -x  # noqa: E731
    a = dsm_loss(score, sde, x0, generator=torch.Generator().manual_seed(0))
    b = dsm_loss(score, sde, x0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (8,)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert cfm_loss(score, sde, x0, generator=torch.Generator().manual_seed(0)).shape == (8,)
    assert ddpm_loss(score, sde, x0, generator=torch.Generator().manual_seed(0)).shape == (8,)
    assert esm_loss(score, lambda x, t: -2 * x, sde, x0, generator=torch.Generator().manual_seed(0)).shape == (8,)


def test_losses_train_a_model():
    """Gradients flow through ISM/SSM (create_graph) so one optimiser step lowers the loss."""
    lin = torch.nn.Linear(2, 2)
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    model = lambda y, t: lin(y)  # noqa: E731
    for loss_fn in (lambda: ism_loss(model, x, 0.0).mean(),
                    lambda: ssm_loss(model, x, 0.0, probes=8, generator=torch.Generator().manual_seed(1)).mean()):
        before = loss_fn()
        opt.zero_grad()
        before.backward()
        opt.step()
        assert loss_fn() < before


def test_bad_inputs():
    sde, x0 = VPSDE(), torch.zeros(4, 2)
    score = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="weighting must be one of"):
        dsm_loss(score, sde, x0, weighting="snr")
    with pytest.raises(ValueError, match=r"t must be 0-d or shaped \[B\] = \[4\]"):
        dsm_loss(score, sde, x0, t=torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        cfm_loss(score, sde, x0, t=-0.5)
    with pytest.raises(ValueError, match="probe must be one of"):
        ssm_loss(score, x0, 0.5, probe="sphere")
    with pytest.raises(ValueError, match="probes must be a positive int"):
        ssm_loss(score, x0, 0.5, probes=0)
    with pytest.raises(TypeError, match="steps must be a positive int"):
        ddpm_loss(score, sde, x0, steps=10.0)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm_elbo(score, sde, x0, variance="learned")
    with pytest.raises(ValueError, match="needs steps >= 2"):
        ddpm_elbo(score, sde, x0, steps=1)
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        dsm_loss(lambda x, t: x[:, :1], sde, x0)
    with pytest.raises(ValueError, match="weighting must be one of"):
        esm_loss(score, score, sde, x0, weighting="snr")
    with pytest.raises(ValueError, match="target_score must return a tensor shaped like x"):
        esm_loss(score, lambda x, t: x[:, :1], sde, x0)
