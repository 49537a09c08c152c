"""Samplers driven by the exact score of the 1-D mixture (notes §5.2): mode weight within 0.015,
mean and std within 0.055 (4 SE at n = 20 000). Deterministic samplers start from a quantile grid
of the prior, so their check isolates the ODE map from prior-sampling noise."""

import math

import pytest
import torch

from ddlm.continuous import (
    VESDE,
    VPSDE,
    GaussianMixture,
    SubVPSDE,
    annealed_langevin,
    classifier_free_guidance,
    langevin_dynamics,
    odeint,
    probability_flow,
    sample_ddim,
    sample_ddpm,
    sample_ode,
    sample_sde,
    time_grid,
)

N = 20000


def gaussian_quantiles(mean, std, n=N):
    """n evenly spaced quantiles of N(mean, std^2), [n, 1]."""
    u = (torch.arange(n) + 0.5) / n
    return mean + std * torch.special.ndtri(u)[:, None]


def prior_quantiles(sde, n=N):
    return gaussian_quantiles(0.0, sde.prior_std, n)


@pytest.mark.parametrize("sde,steps", [(VPSDE(), 200), (VESDE(), 200)], ids=["vp", "ve"])
def test_reverse_sde_recovers_the_mixture(mixture_1d, assert_recovers, sde, steps):
    x = sample_sde(mixture_1d.score_fn(sde), sde, (N, 1), steps=steps, generator=torch.Generator().manual_seed(0))
    assert_recovers(x, mixture_1d)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_predictor_corrector_recovers_the_mixture(mixture_1d, assert_recovers, sde):
    x = sample_sde(mixture_1d.score_fn(sde), sde, (N, 1), steps=100, corrector_steps=1, snr=0.16,
                   generator=torch.Generator().manual_seed(1))
    assert_recovers(x, mixture_1d)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_ddpm_ancestral_recovers_the_mixture(mixture_1d, assert_recovers, sde):
    x = sample_ddpm(mixture_1d.score_fn(sde), sde, (N, 1), steps=200, generator=torch.Generator().manual_seed(2))
    assert_recovers(x, mixture_1d)


@pytest.mark.parametrize(
    "sde,method,steps",
    [(VPSDE(), "heun", 50), (SubVPSDE(), "rk4", 25), (VESDE(), "dopri5", None)],
    ids=["vp-heun", "subvp-rk4", "ve-dopri5"],
)
def test_probability_flow_ode_recovers_the_mixture(mixture_1d, assert_recovers, sde, method, steps):
    """From prior quantiles the flow map lands on data quantiles: weight within 0.01, of which the prior
    mismatch takes 0.0056 for VE (N(0, 50^2) against p_1 = N(0.8, 50^2 + 2.6): 0.016 prior stds)."""
    kwargs = {"steps": steps} if steps else {}
    x = sample_ode(mixture_1d.score_fn(sde), sde, None, method=method, x_init=prior_quantiles(sde), **kwargs)
    assert_recovers(x, mixture_1d, weight_tol=0.01, moment_tol=0.03)


def test_coarse_euler_on_ve_is_biased(mixture_1d):
    """notes §5.2 pitfall: 100 Euler steps of the VE PF-ODE visibly shrink the spread."""
    sde = VESDE()
    x = sample_ode(mixture_1d.score_fn(sde), sde, None, method="euler", steps=100, x_init=prior_quantiles(sde))
    assert x.std().item() < 1.9 - 0.05


def test_ddim_recovers_the_mixture(mixture_1d, assert_recovers):
    """DDIM is first order and contracts (on N(0, I) data each step scales x by cos of the angle step),
    so it needs about 100 steps for the 0.03 moment tolerance."""
    sde = VPSDE()
    x = sample_ddim(mixture_1d.score_fn(sde), sde, None, steps=100, x_init=prior_quantiles(sde))
    assert_recovers(x, mixture_1d, weight_tol=0.005, moment_tol=0.03)


def test_annealed_langevin_recovers_weights_approximately(mixture_1d):
    """NCSN annealed Langevin, sigma 10 -> 0.01 over 10 levels x 100 steps: weights within 0.03 and
    per-mode std within 5% (it is an approximate sampler; notes measured w 0.304-0.316)."""
    sde = VESDE(sigma_min=0.01, sigma_max=10.0, kernel="song")
    x = annealed_langevin(mixture_1d.score_fn(sde), sde, (N, 1), levels=10, steps_per_level=100, step_lr=2e-5,
                          t_min=0.0, generator=torch.Generator().manual_seed(3))[:, 0]
    assert abs((x < 0).double().mean().item() - 0.3) < 0.03
    for mode in (x[x < 0], x[x >= 0]):
        assert abs(mode.std().item() / 0.5 - 1) < 0.05


def test_plain_langevin_at_one_noise_level_misses_the_weights(mixture_1d):
    """Negative control (Song & Ermon 2019): Langevin on the data score does not mix between modes,
    so the weights reflect the initial split (about 0.5), not 0.3."""
    sde = VESDE()
    gen = torch.Generator().manual_seed(4)
    x = 3 * torch.randn(5000, 1, generator=gen)
    x = langevin_dynamics(mixture_1d.score_fn(sde), x, 0.0, steps=1000, step_size=0.01, generator=gen)[:, 0]
    assert abs((x < 0).double().mean().item() - 0.3) > 0.1
    for mode in (x[x < 0], x[x >= 0]):  # within a mode it does converge
        assert abs(mode.std().item() / 0.5 - 1) < 0.05


def test_langevin_corrector_keeps_p_t_stationary(mixture_1d):
    """Start from exact samples of p_t, run 20 SNR-rule corrector steps: weights and moments unchanged."""
    sde, t = VPSDE(), 0.1
    gen = torch.Generator().manual_seed(5)
    x_t, _ = sde.perturb(mixture_1d.sample(N, generator=gen), t, generator=gen)
    x = langevin_dynamics(mixture_1d.score_fn(sde), x_t, t, steps=20, snr=0.16, generator=gen)[:, 0]
    mean, cov = mixture_1d.moments(t, sde)
    assert abs((x < 0).double().mean().item() - 0.3) < 0.015
    assert abs(x.mean().item() - mean.item()) < 0.055
    assert abs(x.std().item() - cov.sqrt().item()) < 0.055


def test_langevin_step_rules_match_hand_computed_steps():
    """One corrector step on a fixed input: "expected" eps = 2 (r sqrt(D) / mean ||s||)^2 and score_sde's
    eps = 2 (r mean ||z|| / mean ||s||)^2 with z the step's own noise (alpha_i = 1 at a fixed time)."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]])
    score = lambda y, t: -y  # noqa: E731
    r = 0.2
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    score_norm = (math.sqrt(5) + math.sqrt(10) + 0.5) / 3
    noise_norm = z.norm(dim=1).mean().item()
    for rule, eps in (("expected", 2 * (r * math.sqrt(2) / score_norm) ** 2),
                      ("score_sde", 2 * (r * noise_norm / score_norm) ** 2)):
        got = langevin_dynamics(score, x, 0.5, steps=1, snr=r, step_rule=rule, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, x - eps * x + math.sqrt(2 * eps) * z, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_score_sde_rule_in_predictor_corrector_by_hand(sde):
    """One predictor-corrector step t = 0.5 -> s = 0.4 with step_rule="score_sde": the corrector's
    alpha_i is 1 - beta_i = alpha(t)^2 / alpha(s)^2 = exp(-(B(t) - B(s))) on VP and 1 on VE."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]])
    score = lambda y, t: -y / (1 + t[:, None])  # noqa: E731
    r, t, s = 0.16, 0.5, 0.4
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)
    if isinstance(sde, VPSDE):
        integral = lambda u: 0.1 * u + 0.5 * 19.9 * u**2  # noqa: E731
        retention, f, g2 = math.exp(-(integral(t) - integral(s))), -0.5 * (0.1 + 19.9 * t), 0.1 + 19.9 * t
    else:
        level = 0.01 * (50 / 0.01) ** t
        retention, f, g2 = 1.0, 0.0, 2 * math.log(50 / 0.01) * level**2
    s_x = -x / 1.5
    eps = 2 * retention * (r * z1.norm(dim=1).mean() / s_x.norm(dim=1).mean()) ** 2
    x1 = x + eps * s_x + (2 * eps).sqrt() * z1
    x2 = x1 - (f * x1 - g2 * (-x1 / 1.5)) * (t - s) + math.sqrt(g2 * (t - s)) * z2
    got = sample_sde(score, sde, None, steps=1, t_max=t, t_min=s, corrector_steps=1, snr=r, step_rule="score_sde",
                     denoise=False, x_init=x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, x2, rtol=1e-10, atol=1e-10)


def test_score_sde_rule_keeps_p_t_stationary_and_samples_the_mixture(mixture_1d, assert_recovers):
    """The score_sde rule as corrector: 20 Langevin steps from exact p_t keep weights and moments, and
    PC sampling (VP, 100 steps + 1 corrector) recovers the mixture."""
    sde, t = VPSDE(), 0.1
    gen = torch.Generator().manual_seed(7)
    x_t, _ = sde.perturb(mixture_1d.sample(N, generator=gen), t, generator=gen)
    x = langevin_dynamics(mixture_1d.score_fn(sde), x_t, t, steps=20, snr=0.16, step_rule="score_sde", generator=gen)
    mean, cov = mixture_1d.moments(t, sde)
    assert abs((x < 0).double().mean().item() - 0.3) < 0.015
    assert abs(x.mean().item() - mean.item()) < 0.055 and abs(x.std().item() - cov.sqrt().item()) < 0.055
    x = sample_sde(mixture_1d.score_fn(sde), sde, (N, 1), steps=100, corrector_steps=1, step_rule="score_sde",
                   generator=gen)
    assert_recovers(x, mixture_1d)


def test_classifier_free_guidance_is_the_score_of_the_guided_gaussian():
    """Equal-variance Gaussians: s_u + w (s_c - s_u) is the exact noised score of N(mu_u + w (mu_c - mu_u), s^2)."""
    sde, w = VPSDE(), 3.0
    cond = GaussianMixture([1.0], [[1.5]], stds=[0.4])
    uncond = GaussianMixture([1.0], [[-0.5]], stds=[0.4])
    guided_target = GaussianMixture([1.0], [[-0.5 + w * 2.0]], stds=[0.4])
    guided = classifier_free_guidance(cond.score_fn(sde), uncond.score_fn(sde), w)
    x = torch.linspace(-3, 8, 23)[:, None]
    for t in (0.0, 0.2, 0.7):
        tt = torch.full((23,), t)
        torch.testing.assert_close(guided(x, tt), guided_target.score(x, tt, sde), rtol=1e-11, atol=1e-11)
    tt = torch.full((23,), 0.5)
    torch.testing.assert_close(classifier_free_guidance(cond.score_fn(sde), uncond.score_fn(sde), 1.0)(x, tt),
                               cond.score(x, tt, sde))
    torch.testing.assert_close(classifier_free_guidance(cond.score_fn(sde), uncond.score_fn(sde), 0.0)(x, tt),
                               uncond.score(x, tt, sde))
    end_mean, end_cov = guided_target.moments(1.0, sde)  # start from the exact p_1 of the guided law
    x_init = gaussian_quantiles(end_mean.item(), end_cov.sqrt().item(), 4000)
    x = sample_ode(guided, sde, None, method="heun", steps=50, x_init=x_init)
    assert abs(x.mean().item() - 5.5) < 0.005 and abs(x.std().item() - 0.4) < 0.005


def test_samplers_handle_event_shapes():
    """A 4-D Gaussian with event shape (2, 2): DDIM, the PF-ODE and the reverse SDE reproduce its
    mean and covariance (8000 samples: 4 SE is about 0.06 on a variance)."""
    cov = torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.5, 0.8, 0.1, 0.0], [0.0, 0.1, 0.5, -0.2], [0.2, 0.0, -0.2, 0.6]])
    gauss = GaussianMixture([1.0], torch.tensor([[[1.0, -1.0], [0.5, 0.0]]]), covariances=cov[None])
    sde = VPSDE()
    gen = torch.Generator().manual_seed(6)
    for x in (sample_ddim(gauss.score_fn(sde), sde, (8000, 2, 2), steps=200, generator=gen),
              sample_ode(gauss.score_fn(sde), sde, (8000, 2, 2), steps=30, generator=gen),
              sample_sde(gauss.score_fn(sde), sde, (8000, 2, 2), steps=200, generator=gen)):
        assert x.shape == (8000, 2, 2)
        flat = x.reshape(8000, 4)
        assert (flat.mean(0) - gauss.means[0]).abs().max() < 0.05
        assert (torch.cov(flat.T) - cov).abs().max() < 0.06


def test_samplers_are_reproducible(mixture_1d):
    sde = VPSDE()
    score = mixture_1d.score_fn(sde)
    for sampler in (lambda g: sample_sde(score, sde, (64, 1), steps=10, corrector_steps=1, generator=g),
                    lambda g: sample_ddpm(score, sde, (64, 1), steps=10, generator=g),
                    lambda g: sample_ddim(score, sde, (64, 1), steps=10, eta=0.5, generator=g),
                    lambda g: sample_ode(score, sde, (64, 1), steps=5, generator=g),
                    lambda g: annealed_langevin(score, VESDE(), (64, 1), levels=2, steps_per_level=3, generator=g),
                    lambda g: langevin_dynamics(score, torch.zeros(64, 1), 0.5, steps=3, snr=0.1, generator=g)):
        a, b = sampler(torch.Generator().manual_seed(11)), sampler(torch.Generator().manual_seed(11))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(a, sampler(torch.Generator().manual_seed(12)))


def test_ddim_with_eta_one_is_ddpm(mixture_1d):
    sde = VPSDE()
    score = mixture_1d.score_fn(sde)
    a = sample_ddpm(score, sde, (32, 1), steps=20, generator=torch.Generator().manual_seed(0))
    b = sample_ddim(score, sde, (32, 1), steps=20, eta=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_progress_bar_runs(mixture_1d, capsys):
    sde = VPSDE()
    sample_sde(mixture_1d.score_fn(sde), sde, (4, 1), steps=3, progress=True)
    assert "reverse SDE" in capsys.readouterr().err


def test_time_grid_and_probability_flow():
    grid = time_grid(4, t_max=1.0, t_min=0.2)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))
    sde = VPSDE()
    score = lambda x, t: -x  # noqa: E731
    x, t = torch.randn(3, 2), torch.full((3,), 0.4)
    torch.testing.assert_close(probability_flow(score, sde)(x, t), sde.probability_flow_drift(x, t, -x))


def test_odeint_on_known_solutions():
    """dy/dt = -t y from 0 to 1 and back: y(1) = exp(-1/2); tuple states are integrated jointly."""
    y0 = torch.ones(3, 2)
    for method, steps, tol in (("euler", 200, 2e-3), ("heun", 50, 1e-4), ("rk4", 20, 1e-7), ("dopri5", None, 1e-7)):
        y, nfe = odeint(lambda y, t: -t[:, None] * y, y0, 0.0, 1.0, method=method, steps=steps or 1,
                        rtol=1e-9, atol=1e-9)
        assert (y - math.exp(-0.5)).abs().max() < tol and nfe > 0
        back, _ = odeint(lambda y, t: -t[:, None] * y, y, 1.0, 0.0, method=method, steps=steps or 1,
                         rtol=1e-9, atol=1e-9)
        assert (back - 1).abs().max() < 2 * tol
    (a, b), _ = odeint(lambda s, t: (s[1], -s[0]), (torch.zeros(2), torch.ones(2)), 0.0, math.pi / 2,
                       method="rk4", steps=100)
    assert (a - 1).abs().max() < 1e-8 and b.abs().max() < 1e-8


def test_bad_inputs(mixture_1d):
    sde = VPSDE()
    score = mixture_1d.score_fn(sde)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        sample_sde(score, sde, (4, 1), steps=0)
    with pytest.raises(TypeError, match="steps must be a positive int"):
        sample_ddpm(score, sde, (4, 1), steps=2.5)
    with pytest.raises(ValueError, match="method must be one of"):
        sample_ode(score, sde, (4, 1), method="rk45")
    with pytest.raises(ValueError, match="t_min must be smaller than t_max"):
        sample_ode(score, sde, (4, 1), t_min=0.5, t_max=0.4)
    with pytest.raises(ValueError, match=r"t_max must lie in \[0, 1\]"):
        sample_sde(score, sde, (4, 1), t_max=2.0)
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        sample_sde(lambda x, t: x[:, :1], sde, (4, 2), steps=2)
    with pytest.raises(ValueError, match="shape must be"):
        sample_ddpm(score, sde, (), steps=2)
    with pytest.raises(ValueError, match="x_init has shape"):
        sample_ddim(score, sde, (4, 1), x_init=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="corrector_steps must be a non-negative int"):
        sample_sde(score, sde, (4, 1), corrector_steps=-1)
    with pytest.raises(ValueError, match="eta must lie in"):
        sample_ddim(score, sde, (4, 1), eta=2.0)
    with pytest.raises(ValueError, match="step_rule must be one of"):
        sample_sde(score, sde, (4, 1), corrector_steps=1, step_rule="sqrt_d")
    with pytest.raises(ValueError, match="step_rule must be one of"):
        langevin_dynamics(score, torch.zeros(4, 1), 0.5, steps=3, snr=0.1, step_rule="score-sde")
    with pytest.raises(ValueError, match="give exactly one of step_size and snr"):
        langevin_dynamics(score, torch.zeros(4, 1), 0.5, steps=3)
    with pytest.raises(ValueError, match=r"t must be 0-d or shaped \[B\] = \[4\]"):
        langevin_dynamics(score, torch.zeros(4, 1), torch.zeros(2), steps=3, step_size=0.1)
    with pytest.raises(ValueError, match="must be positive; raise t_min"):
        annealed_langevin(score, VESDE(kernel="exact"), (4, 1), t_min=0.0)
