"""Sample quality of token sequences: generative perplexity under a reference AR model, unigram entropy
and distinct-n, plus ancestral sampling of an AR model for reference rows.

Generative perplexity alone rewards low-temperature, repetitive samples; the unigram entropy of each
sample exposes them (a degenerate sample repeats a few tokens and has low entropy), and distinct-n
measures repetition across the whole set.
"""

from __future__ import annotations

import math

import torch

from .losses import ar_nll
from .sampling import sample_categorical


def generative_perplexity(reference, samples: torch.Tensor, context: int, batch_size: int | None = None) -> float:
    """exp(mean -log p_ref(token)) of samples Long[B, L] under an AR model (objective='ar') that shares
    their tokenizer; every token is scored, the first conditioned on ``context`` (the EOS id)."""
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must be a non-empty Long[B, L], got shape {list(samples.shape)}")
    step = batch_size or samples.shape[0]
    total = sum(float(ar_nll(reference, chunk, context=context).sum()) for chunk in samples.split(step))
    return math.exp(total / samples.numel())


def unigram_entropies(samples: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each sample's token frequencies: float64 [B] of samples Long[B, L]."""
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must be a non-empty Long[B, L], got shape {list(samples.shape)}")
    entropies = []
    for row in samples:
        counts = torch.unique(row, return_counts=True)[1].double()
        p = counts / counts.sum()
        entropies.append(-(p * p.log()).sum())
    return torch.stack(entropies)


def unigram_entropy(samples: torch.Tensor) -> float:
    """Mean over samples Long[B, L] of the entropy (nats) of each sample's token frequencies."""
    return float(unigram_entropies(samples).mean())


def distinct_n(samples: torch.Tensor, n: int) -> float:
    """Distinct n-grams over all n-grams of samples Long[B, L] (n-grams within a sample; 1 = no repeats)."""
    if samples.dim() != 2 or not 1 <= n <= samples.shape[1]:
        raise ValueError(f"need samples Long[B, L] with 1 <= n <= L, got shape {list(samples.shape)} and n={n}")
    grams = samples.unfold(1, n, 1).reshape(-1, n)
    return torch.unique(grams, dim=0).shape[0] / grams.shape[0]


def sample_metrics(reference, samples: torch.Tensor, context: int, batch_size: int | None = None) -> dict[str, float]:
    """All four metrics of samples Long[B, L]: gen_ppl (under ``reference``), entropy, distinct_2, distinct_4
    (n capped at L for shorter samples)."""
    length = samples.shape[-1]
    return {"gen_ppl": generative_perplexity(reference, samples, context, batch_size), "entropy": unigram_entropy(samples),
            "distinct_2": distinct_n(samples, min(2, length)), "distinct_4": distinct_n(samples, min(4, length))}


@torch.no_grad()
def ar_sample(model, num_samples: int, length: int, context: int, *, temperature: float = 1.0,
              generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Ancestral samples Long[num_samples, length] of an AR model ``x -> log-probs [B, k, N]``, starting
    after the ``context`` token (EOS); the context is not returned."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = torch.full((num_samples, 1), context, dtype=torch.long, device=device)
    for _ in range(length):
        log_probs = model(x)[:, -1].double() / temperature
        weights = torch.exp(log_probs - log_probs.amax(-1, keepdim=True))
        x = torch.cat([x, sample_categorical(weights, generator)[:, None]], 1)
    return x[:, 1:]
