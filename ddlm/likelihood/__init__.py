"""Likelihood bounds with Monte Carlo error bars (``bounds``): ``nll_bound``, ``conditional_nll_bound``,
the per-block estimates and the stratified time samplers of the t integral.

The public names are importable from here, as ``ddlm.likelihood.nll_bound``."""

from .bounds import (T_IMPORTANCE, T_SAMPLING, BlockEstimates, NLLBound, batch_uniforms, block_estimates, clamped_dwdse,
                     conditional_nll_bound, dwdse, nll_bound, pooled_times, power_warp, sample_times, stratified_uniforms,
                     training_times)

__all__ = ["BlockEstimates", "NLLBound", "T_IMPORTANCE", "T_SAMPLING", "batch_uniforms", "block_estimates", "clamped_dwdse",
           "conditional_nll_bound", "dwdse", "nll_bound", "pooled_times", "power_warp", "sample_times",
           "stratified_uniforms", "training_times"]
