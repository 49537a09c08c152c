"""Inpainting of known coordinates: the replacement projection for the stochastic samplers.

Two routes fill the unknown coordinates of x0 given known values y on a mask:

- exact: sample with the score of p_t(x_t | x0[mask] = y). For the Gaussian-mixture oracle it is
  ``mixture.condition(mask, y).score_fn(sde)``; any sampler then draws the exact conditional law.
- approximate (this module): sample with the unconditional score and, at every time the sampler
  reaches, overwrite the known coordinates by a fresh forward-noised copy alpha(t) y + sigma(t) z
  (score_sde's inpainter; RePaint without its resampling loop). The unknown coordinates only
  see y through the noised copies, which are drawn independently of them, so the result is biased
  towards the unconditional law, and more steps do not remove the bias. On a 2-D mixture where y
  decides the mode, it puts 0.48 of the mass in the mode that holds 0.955 of the exact conditional
  (``benchmarks/continuous_inpainting.py``; ``docs/how-to/continuous-guidance.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import ProjectFn, per_sample, randn_like
from .sde import GaussianSDE

__all__ = ["replacement_inpainting"]


def replacement_inpainting(
    sde: GaussianSDE, known: Tensor, mask: Tensor, *, generator: torch.Generator | None = None
) -> ProjectFn:
    """The projection x <- where(mask, alpha(t) known + sigma(t) z, x) with fresh z ~ N(0, I) per call.

    ``known`` and ``mask`` (bool, True = known) are shaped like one event [*event] or like the
    batch [B, *event]; entries of ``known`` outside the mask are ignored. Pass the result as
    ``project=`` to ``sample_sde``, ``sample_ddpm`` or ``sample_ddim``; at the end (t = 0) it sets
    the known coordinates to ``known`` exactly. Approximate: see the module docstring. Pass the
    sampler's generator to draw from one random stream.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor (True marks a known coordinate)")
    if not isinstance(known, Tensor) or not known.is_floating_point():
        raise TypeError("known must be a floating tensor of the known values")
    if known.shape != mask.shape:
        raise ValueError(f"known and mask must have the same shape, got {tuple(known.shape)} and {tuple(mask.shape)}")

    def project(x: Tensor, t: Tensor) -> Tensor:
        if mask.shape not in (x.shape, x.shape[1:]):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} matches neither x {tuple(x.shape)} "
                f"nor one event {tuple(x.shape[1:])}"
            )
        alpha, sigma = per_sample(sde.alpha(t), x), per_sample(sde.sigma(t), x)
        noised = alpha * known.to(x) + sigma * randn_like(x, generator)
        return torch.where(mask.to(x.device), noised, x)

    return project
