"""Classifier-free guidance as a combinator of score functions."""

from __future__ import annotations

from torch import Tensor

from ._common import ScoreFn, call_model

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(cond_fn: ScoreFn, uncond_fn: ScoreFn, guidance_scale: float) -> ScoreFn:
    """Guided score ``s_u + guidance_scale (s_c - s_u)`` as a new ``(x, t) -> score`` callable.

    Convention of diffusers: ``guidance_scale = 1`` is the conditional model, ``0`` the
    unconditional one; Ho & Salimans' weight is w = guidance_scale - 1, i.e. (1 + w) s_c - w s_u.
    The combination is linear, so it applies unchanged to eps-, x0-, v- or velocity-predictions.
    """
    scale = float(guidance_scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        cond = call_model(cond_fn, x, t, name="cond_fn")
        uncond = call_model(uncond_fn, x, t, name="uncond_fn")
        return uncond + scale * (cond - uncond)

    return guided
