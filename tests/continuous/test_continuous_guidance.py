"""Classifier guidance and inpainting against exact Gaussian-mixture oracles: the guided score with
the exact noisy classifier is the component's score, the conditioned mixture matches quadrature of the
joint density, and samplers driven by either reproduce the exact conditional law (mode weight within
0.015, mean and std within 0.055 at n = 20 000, the tolerances of test_continuous_samplers.py).
Replacement inpainting is approximate: its measured bias is asserted, not its exactness."""

import math

import pytest
import torch

from ddlm.continuous import (
    VESDE,
    VPSDE,
    GaussianMixture,
    classifier_guidance,
    log_likelihood,
    replacement_inpainting,
    sample_ddpm,
    sample_ode,
    sample_sde,
)

N = 20000


@pytest.fixture
def mixture_2d():
    """Two correlated 2-D components; given x[1] = 0 the first coordinate is the 1-D mixture
    0.316 N(-1.5, 0.35) + 0.684 N(2.4, 0.32) (mean 1.167, std 1.902), whose modes split at 0.4."""
    return GaussianMixture(
        [0.3, 0.7], [[-2.0, -1.0], [2.0, 1.0]],
        covariances=[[[0.5, 0.3], [0.3, 0.6]], [[0.4, -0.2], [-0.2, 0.5]]],
    )


def left_mass(mixture_1d_marginal, split):
    """P(x[0] < split) under a mixture, exactly (sum of normal CDFs of the first coordinate)."""
    covs = mixture_1d_marginal.covariances()
    return sum(
        w * 0.5 * math.erfc((mu[0].item() - split) / math.sqrt(2 * c[0, 0].item()))
        for w, mu, c in zip(mixture_1d_marginal.weights.tolist(), mixture_1d_marginal.means, covs)
    )


def check_first_coordinate(x, target, split, weight_tol=0.015, moment_tol=0.055):
    """Mode weight (mass below split), mean and std of x[:, 0] against the exact mixture ``target``."""
    u = x[:, 0]
    mean, cov = target.moments()
    left = (u < split).double().mean().item()
    assert abs(left - left_mass(target, split)) < weight_tol, f"weight {left:.4f} vs {left_mass(target, split):.4f}"
    assert abs(u.mean().item() - mean[0].item()) < moment_tol, f"mean {u.mean().item():.4f} vs {mean[0].item():.4f}"
    std = math.sqrt(cov[0, 0].item())
    assert abs(u.std().item() - std) < moment_tol, f"std {u.std().item():.4f} vs {std:.4f}"


# ---- classifier guidance ----


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_exact_classifier_guidance_is_the_component_score(sde):
    """grad log p_t(x) + grad log p_t(c | x) = grad log p_t(x | c) (Bayes), at every t; weight w gives
    s + w (s_c - s); weight 0 gives the unguided score."""
    gm = GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
                         covariances=[[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.4]], [[0.2, -0.1], [-0.1, 0.6]]])
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)) * 3
    for c in range(3):
        component = gm.component(c)
        for weight in (0.0, 1.0, 2.5):
            guided = classifier_guidance(gm.score_fn(sde), lambda y, t: gm.log_responsibilities(y, t, sde)[:, c],
                                         weight)
            for t in (0.05, 0.4, 0.9):
                tt = torch.full((32,), t)
                s, s_c = gm.score(x, tt, sde), component.score(x, tt, sde)
                torch.testing.assert_close(guided(x, tt), s + weight * (s_c - s), rtol=1e-9, atol=1e-9)


def test_classifier_guidance_samples_the_selected_component(mixture_1d):
    """Reverse SDE (VP, 200 steps) with the exact posterior over components, class 1 (N(2, 0.5^2),
    prior weight 0.7): mass below 0 is P(N(2, 0.25) < 0) = 3e-5, mean 2 and std 0.5."""
    sde = VPSDE()
    guided = classifier_guidance(mixture_1d.score_fn(sde), lambda x, t: mixture_1d.log_responsibilities(x, t, sde)[:, 1])
    x = sample_sde(guided, sde, (N, 1), steps=200, generator=torch.Generator().manual_seed(0))
    check_first_coordinate(x, mixture_1d.component(1), split=0.0)


def test_classifier_guidance_finds_a_rare_component_with_the_ode():
    """PF-ODE (Heun, 40 steps) under torch.no_grad from quantiles of the exact p_1 of component 0
    (prior weight 0.1 of a 2-D mixture): the fraction classified as component 0 at t = 0 matches
    exact draws of that component, and so do mean and covariance (n = 4000: 4 SE about 0.04)."""
    sde = VPSDE()
    gm = GaussianMixture([0.1, 0.6, 0.3], [[-2.0, 2.0], [2.0, 0.0], [-1.0, -2.0]], stds=[0.6, 0.8, 0.5])
    guided = classifier_guidance(gm.score_fn(sde), lambda x, t: gm.log_responsibilities(x, t, sde)[:, 0])
    target = gm.component(0)
    mean_1, cov_1 = target.moments(1.0, sde)
    u = (torch.arange(4000) + 0.5) / 4000
    z = torch.special.ndtri(torch.stack([u, u[torch.randperm(4000, generator=torch.Generator().manual_seed(1))]], 1))
    x_init = mean_1 + z * cov_1.diagonal().sqrt()
    with torch.no_grad():
        x = sample_ode(guided, sde, None, method="heun", steps=40, x_init=x_init)
    reference = target.sample(200000, generator=torch.Generator().manual_seed(2))
    fraction = (gm.responsibilities(x).argmax(1) == 0).double().mean().item()
    expected = (gm.responsibilities(reference).argmax(1) == 0).double().mean().item()
    assert abs(fraction - expected) < 0.01, f"{fraction:.4f} vs {expected:.4f}"
    assert (x.mean(0) - target.means[0]).abs().max() < 0.04
    assert (torch.cov(x.T) - target.covariances()[0]).abs().max() < 0.04


def test_guided_score_gives_the_class_log_likelihood(mixture_1d):
    """The PF-ODE likelihood differentiates the guided score once more (its gradient keeps the graph when
    x requires grad): with the exact classifier it is log p(x0 | c) of the component, to 1e-4."""
    sde = VPSDE()
    guided = classifier_guidance(mixture_1d.score_fn(sde), lambda x, t: mixture_1d.log_responsibilities(x, t, sde)[:, 0])
    component = mixture_1d.component(0)
    points = torch.tensor([[-2.7], [-2.0], [-1.1], [0.5]])
    ll = log_likelihood(guided, sde, points, prior_log_prob=lambda z: component.log_prob(z, 1.0, sde), t_min=0.0,
                        rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ll.log_prob, component.log_prob(points), rtol=0, atol=1e-4)


# ---- inpainting ----


def test_conditioned_mixture_matches_quadrature():
    """condition() against the joint density on a grid: conditional mean and covariance of the unknown
    coordinates of a 3-D mixture, with one and with two coordinates known."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 3, generator=gen)
    gm = GaussianMixture([0.4, 0.6], torch.randn(2, 3, generator=gen), covariances=a @ a.transpose(1, 2) / 3 + 0.3 * torch.eye(3))
    values = torch.tensor([0.3, -0.5, 0.8])
    axis = torch.linspace(-8, 8, 801)
    for known in ([True, False, True], [False, True, False]):
        mask = torch.tensor(known)
        unknown = (~mask).nonzero()[:, 0]
        grids = torch.meshgrid(*[axis] * len(unknown), indexing="ij")
        points = values.repeat(grids[0].numel(), 1)
        points[:, unknown] = torch.stack([g.reshape(-1) for g in grids], 1)
        density = gm.log_prob(points).exp()
        density = density / density.sum()
        cond = points[:, unknown]
        mean = (density[:, None] * cond).sum(0)
        cov = (density[:, None, None] * (cond - mean)[:, :, None] * (cond - mean)[:, None, :]).sum(0)
        exact_mean, exact_cov = gm.condition(mask, values).moments()
        torch.testing.assert_close(exact_mean[unknown], mean, rtol=0, atol=1e-5)  # grid step 0.02
        torch.testing.assert_close(exact_cov[unknown][:, unknown], cov, rtol=0, atol=1e-5)
        torch.testing.assert_close(exact_mean[mask], values[mask], rtol=0, atol=1e-12)
        assert exact_cov[mask].abs().max() < 1e-12


@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_inpainting_with_the_conditional_score_is_exact(mixture_2d, sampler):
    """The score of the conditioned mixture drives the unchanged samplers to the exact conditional law:
    the known coordinate ends at its value (Tweedie) and the unknown one has the exact mode weight,
    mean and std."""
    sde, mask, values = VPSDE(), torch.tensor([False, True]), torch.tensor([0.0, 0.0])
    conditional = mixture_2d.condition(mask, values)
    gen = torch.Generator().manual_seed(4)
    if sampler == "sde":
        x = sample_sde(conditional.score_fn(sde), sde, (N, 2), steps=200, generator=gen)
    else:
        x = sample_ode(conditional.score_fn(sde), sde, (N, 2), method="heun", steps=50, generator=gen)
    assert x[:, 1].abs().max() < 1e-12
    check_first_coordinate(x, conditional, split=0.4)


def test_replacement_inpainting_is_biased(mixture_2d):
    """Replacement (known coordinate overwritten by alpha(t) y + sigma(t) z at every step) with the
    unconditional score: the known coordinate ends exactly at y, but the unknown one is biased. Measured
    (reverse SDE or DDPM, 200 steps, n = 20 000): mass below 0.4 about 0.34 against the exact 0.316,
    mean about 0.92 against 1.167 (19 standard errors); 1000 steps do not remove it (0.338, 0.93)."""
    sde, mask, values = VPSDE(), torch.tensor([False, True]), torch.tensor([0.0, 0.0])
    gen = torch.Generator().manual_seed(5)
    project = replacement_inpainting(sde, values, mask, generator=gen)
    x = sample_sde(mixture_2d.score_fn(sde), sde, (N, 2), steps=200, project=project, generator=gen)
    assert x[:, 1].abs().max() == 0
    exact_mean = mixture_2d.condition(mask, values).moments()[0][0].item()
    bias = x[:, 0].mean().item() - exact_mean
    assert -0.35 < bias < -0.15, f"mean bias {bias:.4f}"
    left = (x[:, 0] < 0.4).double().mean().item()
    assert 0.015 < left - left_mass(mixture_2d.condition(mask, values), 0.4) < 0.045
    # y = -1 decides the mode (exact mass below 0.4: 0.955); replacement, which picks the mode at large t
    # where the noised y says little, leaves about 0.47 there (benchmarks/continuous_inpainting.py)
    values = torch.tensor([0.0, -1.0])
    assert left_mass(mixture_2d.condition(mask, values), 0.4) > 0.95
    project = replacement_inpainting(sde, values, mask, generator=gen)
    x = sample_sde(mixture_2d.score_fn(sde), sde, (5000, 2), steps=100, project=project, generator=gen)
    assert 0.4 < (x[:, 0] < 0.4).double().mean().item() < 0.55


def test_replacement_keeps_a_batched_mask_and_event_shapes():
    """A per-sample mask [B, *event] on (2, 2) events: each row keeps its own known entries."""
    sde = VPSDE()
    gm = GaussianMixture([1.0], torch.zeros(1, 2, 2), stds=[1.0])
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2] = True
    values = torch.arange(12.0).reshape(3, 2, 2)
    gen = torch.Generator().manual_seed(6)
    x = sample_ddpm(gm.score_fn(sde), sde, (3, 2, 2), steps=5, project=replacement_inpainting(sde, values, mask),
                    generator=gen)
    assert torch.equal(x[mask], values[mask]) and not torch.equal(x[~mask], values[~mask])


def test_bad_inputs(mixture_1d, mixture_2d):
    sde = VPSDE()
    score = mixture_1d.score_fn(sde)
    with pytest.raises(ValueError, match="weight must be non-negative"):
        classifier_guidance(score, lambda x, t: x[:, 0], -1.0)
    with pytest.raises(TypeError, match="weight must be a finite"):
        classifier_guidance(score, lambda x, t: x[:, 0], float("nan"))
    x, t = torch.zeros(4, 1), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match=r"log_prob_fn must return one log-probability per sample, shape \[4\]"):
        classifier_guidance(score, lambda x, t: x)(x, t)
    with pytest.raises(ValueError, match="must be differentiable in x"):
        classifier_guidance(score, lambda x, t: torch.zeros(4))(x, t)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        replacement_inpainting(sde, torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="known and mask must have the same shape"):
        replacement_inpainting(sde, torch.zeros(3), torch.tensor([False, True]))
    project = replacement_inpainting(sde, torch.zeros(3), torch.tensor([False, True, True]))
    with pytest.raises(ValueError, match="matches neither x"):
        sample_sde(mixture_2d.score_fn(sde), sde, (4, 2), steps=2, project=project)
    with pytest.raises(ValueError, match="project must return a tensor shaped like x"):
        sample_ddpm(mixture_2d.score_fn(sde), sde, (4, 2), steps=2, project=lambda x, t: x[:, :1])
    with pytest.raises(ValueError, match=r"mask must be shaped like one event \(2,\)"):
        mixture_2d.condition(torch.tensor([True]), torch.zeros(2))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        mixture_2d.condition(torch.tensor([0, 1]), torch.zeros(2))
    with pytest.raises(ValueError, match="must be positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], stds=[[1.0, 0.0]]).condition(torch.tensor([False, True]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"k must be a component index in \[0, 2\)"):
        mixture_2d.component(2)
