"""Helpers shared by test modules (import as ``from helpers import ...``; pytest puts tests/ on sys.path)."""

import torch

from ddlm import DDLMForDiffusion


def randomised(config, seed: int = 0, std: float = 0.2) -> DDLMForDiffusion:
    """A model in eval mode whose every parameter (adaLN-Zero gates and the zero-initialised head too) is
    drawn from N(0, std^2) after seeding torch with ``seed``, so outputs depend on all of them."""
    torch.manual_seed(seed)
    model = DDLMForDiffusion(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model
