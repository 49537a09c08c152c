"""Gaussian (continuous-state) diffusion companion: SDEs, score matching, samplers, likelihood."""
