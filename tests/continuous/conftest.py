"""Shared fixtures of the ddlm.continuous tests: float64 throughout, the 1-D mixture oracle of
notes/continuous.md §5 and the mode-weight / moment check used by the sampler tests."""

import math

import pytest
import torch

from ddlm.continuous import GaussianMixture


@pytest.fixture(autouse=True)
def float64_single_thread():
    """float64 by default; one intra-op thread, since these small tensors gain nothing from more and
    a busy machine makes waiting threads slow every op (both settings restored afterwards)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def mixture_1d():
    """Weights (0.3, 0.7), means (-2, +2), stds 0.5: mean 0.8, std 1.90; modes split at x = 0."""
    return GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], stds=[0.5, 0.5])


@pytest.fixture
def assert_recovers():
    """Check 1-D samples against the mixture: left-mode weight, mean and std (notes §5.2 tolerances)."""

    def check(x, mixture, weight_tol=0.015, moment_tol=0.055):
        assert x.shape[1:] == (1,) and torch.isfinite(x).all()
        x = x[:, 0]
        mean, cov = mixture.moments()
        left = (x < 0).double().mean().item()
        assert abs(left - mixture.weights[0].item()) < weight_tol, f"left-mode weight {left:.4f}"
        assert abs(x.mean().item() - mean.item()) < moment_tol, f"mean {x.mean().item():.4f}"
        assert abs(x.std().item() - math.sqrt(cov.item())) < moment_tol, f"std {x.std().item():.4f}"

    return check
