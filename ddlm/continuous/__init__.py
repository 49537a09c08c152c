"""Gaussian (continuous-state) diffusion companion: SDEs, score matching, samplers, likelihood.

Time runs from data (t = 0) to noise (t = 1) and every process has the kernel
``x_t = alpha(t) x0 + sigma(t) eps``. Tensors are [B, *event]; times are 0-d or [B].
"""

from .guidance import classifier_free_guidance, classifier_guidance
from .inpainting import replacement_inpainting
from .likelihood import LogLikelihood, bits_per_dim, divergence, log_likelihood, ode_log_likelihood
from .losses import DSM_WEIGHTINGS, ELBOTerms, cfm_loss, ddpm_elbo, ddpm_loss, dsm_loss, esm_loss, ism_loss, ssm_loss
from .ode import ODE_METHODS, odeint
from .oracles import GaussianMixture
from .parametrization import PREDICTIONS, as_score_fn, convert, tweedie
from .samplers import (
    LANGEVIN_STEP_RULES,
    annealed_langevin,
    langevin_dynamics,
    probability_flow,
    sample_ddim,
    sample_ddpm,
    sample_ode,
    sample_sde,
    time_grid,
)
from .sde import VESDE, VPSDE, GaussianSDE, LinearSDE, OrnsteinUhlenbeck, RectifiedFlow, SubVPSDE

__all__ = [
    # processes
    "GaussianSDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "OrnsteinUhlenbeck",
    "RectifiedFlow",
    # parametrisations
    "PREDICTIONS",
    "convert",
    "tweedie",
    "as_score_fn",
    # losses
    "DSM_WEIGHTINGS",
    "dsm_loss",
    "esm_loss",
    "ism_loss",
    "ssm_loss",
    "ddpm_loss",
    "ddpm_elbo",
    "ELBOTerms",
    "cfm_loss",
    # ODE solver and samplers
    "ODE_METHODS",
    "odeint",
    "time_grid",
    "probability_flow",
    "sample_sde",
    "sample_ode",
    "sample_ddpm",
    "sample_ddim",
    "annealed_langevin",
    "langevin_dynamics",
    "LANGEVIN_STEP_RULES",
    # guidance and inpainting
    "classifier_free_guidance",
    "classifier_guidance",
    "replacement_inpainting",
    # likelihood
    "LogLikelihood",
    "divergence",
    "ode_log_likelihood",
    "log_likelihood",
    "bits_per_dim",
    # oracles
    "GaussianMixture",
]
