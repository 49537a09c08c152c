"""Helpers shared by test modules (import as ``from helpers import ...``; pytest puts tests/ on sys.path)."""

import functools
import pathlib

import torch

from ddlm import DDLMConfig, DDLMForDiffusion


@functools.cache
def byte_tokenizer():
    """A 300-token byte-level BPE trained on the first 200 kB of tests/data/tinyshakespeare.txt (the same on every run)."""
    from ddlm.tokenization import train_byte_bpe

    text = (pathlib.Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    return train_byte_bpe([text[i:i + 10_000] for i in range(0, len(text), 10_000)], 300)


def randomised(config, seed: int = 0, std: float = 0.2) -> DDLMForDiffusion:
    """A model in eval mode whose every parameter (adaLN-Zero gates and the zero-initialised head too) is
    drawn from N(0, std^2) after seeding torch with ``seed``, so outputs depend on all of them."""
    torch.manual_seed(seed)
    model = DDLMForDiffusion(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def save_tiny_pipeline(path, tokenizer, max_length: int):
    """Save an untrained ``tiny`` absorbing pipeline of ``max_length`` positions with ``tokenizer`` to ``path``."""
    from ddlm import DDLMConfig
    from ddlm.pipeline import DiffusionPipeline

    config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=max_length)
    DiffusionPipeline(DDLMForDiffusion(config), tokenizer).save_pretrained(path)
    return path


def conditional_oracle(oracle, tokens: torch.Tensor, positions):
    """The oracle's distribution conditioned on ``tokens`` at ``positions`` (a SequenceOracle of the same graph)."""
    from ddlm import SequenceOracle

    length = tokens.numel()
    keep = torch.ones_like(oracle.probs, dtype=torch.bool)
    for i in positions:
        index = [slice(None)] * length
        index[i] = tokens[i].item()
        mask = torch.zeros_like(keep)
        mask[tuple(index)] = True
        keep &= mask
    return SequenceOracle(oracle.graph, oracle.probs * keep, length)


class OracleModel(torch.nn.Module):
    """Exact ratios of a SequenceOracle behind a DDLMConfig, as ``ddlm eval`` loads models."""

    def __init__(self, oracle):
        super().__init__()
        self.oracle = oracle
        self.config = DDLMConfig(vocab_size=oracle.graph.num_tokens, process="absorbing", schedule="loglinear",
                                 max_position_embeddings=oracle.length)
        self.graph, self.noise = self.config.graph(), self.config.noise()
        self.device_anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, sigma_bar):
        return self.oracle.score_fn(x_t, sigma_bar)


def write_layout(path, config: dict, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published model directory: config.json + model.safetensors (LLaDA's, Dream's); returns the weights written."""
    import json

    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(weights, str(path / "model.safetensors"))
    return weights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as LLaDA and Dream (Qwen2) compute it: normalise in float32, back to x's dtype, times the weight."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def check_samples_and_bounds(model) -> None:
    """A wrapped open-weight model samples 2 x 5 tokens it may draw and bounds them finitely (tiny shapes, fixed seeds)."""
    from ddlm.likelihood import nll_bound
    from ddlm.sampling import sample

    with torch.no_grad():
        x = sample(model, model.graph, model.noise, (2, 5), steps=4, generator=torch.Generator().manual_seed(0), progress=False)
        bound = nll_bound(model, model.graph, model.noise, x, num_t=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 5) and not model.banned[x].any()
    assert bound.bound.shape == (2,) and torch.isfinite(bound.bound).all()
