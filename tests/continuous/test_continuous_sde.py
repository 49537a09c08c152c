"""Paths and SDEs: moment ODEs, drift/diffusion derived from (alpha, sigma), kernels, discretisation."""

import math

import pytest
import torch

from ddlm.continuous import VESDE, VPSDE, LinearSDE, OrnsteinUhlenbeck, RectifiedFlow, SubVPSDE

ALL_SDES = [
    VPSDE(),
    VPSDE(beta_min=0.5, beta_max=5.0),
    SubVPSDE(),
    VESDE(),
    VESDE(kernel="song"),
    OrnsteinUhlenbeck(theta=3.0, std=0.7),
    RectifiedFlow(),
]
IDS = ["vp", "vp-custom", "subvp", "ve-exact", "ve-song", "ou", "rectified"]


def autograd_derivative(fn, t):
    t = t.clone().requires_grad_(True)
    value = fn(t)
    if not value.requires_grad:  # constant in t (VE alpha)
        return torch.zeros_like(t)
    (grad,) = torch.autograd.grad(value.sum(), t)
    return grad


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_moment_odes(sde):
    """d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2 with the closed-form f, g^2."""
    t = torch.linspace(0.01, 0.99, 61)
    d_alpha = autograd_derivative(sde.alpha, t)
    d_var = autograd_derivative(lambda u: sde.sigma(u) ** 2, t)
    f, g2 = sde.drift_coef(t), sde.diffusion_sq(t)
    torch.testing.assert_close(d_alpha, f * sde.alpha(t), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(d_var, 2 * f * sde.sigma(t) ** 2 + g2, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(sde.d_alpha(t), d_alpha, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(sde.d_sigma(t), autograd_derivative(sde.sigma, t), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES[:-1], ids=IDS[:-1])
def test_kernel_starts_at_data(sde):
    t0 = torch.tensor(0.0)
    assert sde.alpha(t0).item() == 1.0
    expected = sde.sigma_min if isinstance(sde, VESDE) and sde.kernel == "song" else 0.0
    assert sde.sigma(t0).item() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_linear_sde_recovers_closed_forms_by_autograd(sde):
    """A LinearSDE built from the closed-form alpha, sigma alone reproduces f and g^2 (1e-10)."""
    derived = LinearSDE(alpha_fn=sde.alpha, sigma_fn=sde.sigma)
    t = torch.linspace(0.02, 0.98, 49)
    torch.testing.assert_close(derived.drift_coef(t), sde.drift_coef(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(derived.diffusion_sq(t), sde.diffusion_sq(t), rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # autograd inside works under no_grad (samplers run there)
        torch.testing.assert_close(derived.drift_coef(t), sde.drift_coef(t), rtol=1e-10, atol=1e-12)


def test_vp_closed_form_values():
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.tensor(0.5)
    integral = 0.1 * 0.5 + 0.5 * 19.9 * 0.25
    assert sde.alpha(t).item() == pytest.approx(math.exp(-integral / 2), rel=1e-14)
    assert sde.sigma(t).item() ** 2 == pytest.approx(1 - math.exp(-integral), rel=1e-14)
    assert sde.diffusion_sq(t).item() == pytest.approx(0.1 + 0.5 * 19.9, rel=1e-14)
    sub = SubVPSDE()
    assert sub.sigma(t).item() == pytest.approx(1 - math.exp(-integral), rel=1e-14)  # a std, not a variance
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    level = 0.01 * (5000.0**0.5)
    assert ve.sigma(t).item() ** 2 == pytest.approx(level**2 - 1e-4, rel=1e-13)
    assert VESDE(kernel="song").sigma(t).item() == pytest.approx(level, rel=1e-14)
    ou = OrnsteinUhlenbeck(theta=2.0, std=0.5)
    assert ou.sigma(t).item() ** 2 == pytest.approx(0.25 * (1 - math.exp(-2.0)), rel=1e-14)
    assert VPSDE(beta_min=4.0, beta_max=4.0).sigma(t).item() == pytest.approx(
        OrnsteinUhlenbeck(theta=2.0).sigma(t).item(), rel=1e-14
    )


@pytest.mark.parametrize("event", [(3,), (2, 3), (1, 2, 2)])
def test_marginal_perturb_shapes_and_per_sample_times(event):
    sde = VPSDE()
    x0 = torch.randn(4, *event, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    x_t, noise = sde.perturb(x0, t, generator=torch.Generator().manual_seed(1))
    assert x_t.shape == x0.shape == noise.shape
    for i in range(4):  # each row uses its own time
        expected = sde.alpha(t[i]) * x0[i] + sde.sigma(t[i]) * noise[i]
        torch.testing.assert_close(x_t[i], expected, rtol=1e-14, atol=1e-14)
    x_scalar, _ = sde.perturb(x0, 0.4, noise=noise)
    torch.testing.assert_close(x_scalar[1], x_t[1])
    again, _ = sde.perturb(x0, t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, x_t, rtol=0, atol=0)


@pytest.mark.parametrize("sde", ALL_SDES[:-1], ids=IDS[:-1])
def test_exact_discretisation_composes_to_the_kernel(sde):
    """Exact steps 0 -> t -> s have the kernel of 0 -> s (means and variances)."""
    x0 = torch.tensor([[1.5, -0.3]])
    t, s = torch.tensor(0.3), torch.tensor(0.8)
    mean_t, std_t = sde.discretize(x0, 0.0, t)
    mean_s, std_ts = sde.discretize(mean_t, t, s)
    ratio = sde.alpha(s) / sde.alpha(t)
    torch.testing.assert_close(mean_s, sde.marginal(x0, s)[0], rtol=1e-12, atol=1e-12)
    var_s = sde.sigma(s) ** 2 - sde.sigma(0.0) ** 2  # the song VE kernel starts at sigma_min
    torch.testing.assert_close(ratio**2 * std_t**2 + std_ts**2, var_s, rtol=1e-11, atol=1e-12)


def test_exact_discretisation_of_vp_is_ddpm():
    """VP exact step on t_i = i/N: mean sqrt(1 - beta_i) x, std sqrt(beta_i), beta_i = 1 - abar_i/abar_{i-1}."""
    sde, n = VPSDE(), 1000
    i = torch.tensor(500)
    abar = lambda k: sde.alpha(k / n) ** 2  # noqa: E731
    beta = 1 - abar(i) / abar(i - 1)
    x = torch.tensor([[0.7]])
    mean, std = sde.discretize(x, (i - 1) / n, i / n)
    torch.testing.assert_close(mean, (1 - beta).sqrt() * x, rtol=1e-12, atol=0)
    assert std.item() == pytest.approx(beta.sqrt().item(), rel=1e-9)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0), OrnsteinUhlenbeck(theta=2.0, std=0.5)],
                         ids=["vp", "subvp", "ve", "ou"])
def test_forward_euler_maruyama_matches_the_kernel(sde):
    """1000 Euler-Maruyama steps from x0 = 1.5 reach N(alpha x0, sigma^2): mean and std within 4 SE."""
    n, steps = 20000, 1000
    gen = torch.Generator().manual_seed(3)
    x = torch.full((n, 1), 1.5)
    grid = torch.linspace(0.0, 1.0, steps + 1)
    for a, b in zip(grid[:-1], grid[1:]):
        mean, std = sde.discretize(x, a, b, method="euler")
        x = mean + std * torch.randn(x.shape, generator=gen)
    exp_mean, exp_std = sde.marginal(torch.tensor([[1.5]]), 1.0)
    assert abs(x.mean().item() - exp_mean.item()) < 4 * exp_std.item() / math.sqrt(n)
    assert abs(x.std().item() / exp_std.item() - 1) < 4 / math.sqrt(2 * n) + 2e-3


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_prior_sample_and_log_prob(sde):
    gen = torch.Generator().manual_seed(0)
    z = sde.prior_sample((50000, 2, 2), generator=gen)
    assert z.shape == (50000, 2, 2) and z.dtype == torch.float64
    assert abs(z.std().item() / sde.prior_std - 1) < 0.01
    torch.testing.assert_close(sde.prior_sample((3, 4), generator=torch.Generator().manual_seed(5)),
                               sde.prior_sample((3, 4), generator=torch.Generator().manual_seed(5)), rtol=0, atol=0)
    reference = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z[:7]).sum((1, 2))
    torch.testing.assert_close(sde.prior_log_prob(z[:7]), reference, rtol=1e-12, atol=1e-12)


def test_drift_and_reverse_drifts():
    sde = SubVPSDE()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    score = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.1, 0.9, 5)
    f, g2 = sde.drift_coef(t)[:, None], sde.diffusion_sq(t)[:, None]
    torch.testing.assert_close(sde.drift(x, t), f * x)
    torch.testing.assert_close(sde.reverse_drift(x, t, score), f * x - g2 * score)
    torch.testing.assert_close(sde.probability_flow_drift(x, t, score), f * x - 0.5 * g2 * score)
    torch.testing.assert_close(sde.diffusion(t), g2[:, 0].sqrt())


def test_bad_inputs_raise_clear_errors():
    sde = VPSDE()
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sde.marginal(x, 1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sde.alpha(torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match=r"t must be 0-d or shaped \[B\] = \[4\]"):
        sde.perturb(x, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"t must be 0-d or shaped \[B\]"):
        sde.drift(x, torch.full((4, 1), 0.5))
    with pytest.raises(TypeError, match="t must be"):
        sde.sigma("0.5")
    with pytest.raises(ValueError, match="kernel must be one of"):
        VESDE(kernel="approx")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        sde.discretize(x, 0.1, 0.2, method="heun")
    with pytest.raises(ValueError, match="s must be >= t"):
        sde.discretize(x, 0.5, 0.2)
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        sde.perturb(x, 0.5, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape must be"):
        sde.prior_sample((0, 2))
