"""Exact oracles: a known distribution over short sequences with its exact noised marginals.

With N real tokens and length L the state space is small enough (N^L clean, S^L noised
sequences) to enumerate, so the forward marginal p_t and the ratios p_t(x^{i<-y}) / p_t(x) are
exact. Use ``oracle.score_fn`` wherever a model's score function goes (samplers, losses, the
likelihood bound) to check that machinery against exact answers::

    graph = ddlm.Absorbing(3)
    oracle = ddlm.SequenceOracle.random(graph, length=3, generator=torch.Generator().manual_seed(0))
    x = ddlm.sampling.sample(oracle.score_fn, graph, ddlm.LogLinear(), (10_000, 3), steps=64)
    print(oracle.total_variation(x))        # ~ the TV of 10k exact draws
"""

from __future__ import annotations

import torch

from .processes import Graph


class SequenceOracle:
    """A distribution p0 over all N^L clean sequences of length L, with exact marginals under ``graph``.

    probs: [N] * L (or [N^L] in lexicographic order) non-negative weights; normalised here.
    """

    def __init__(self, graph: Graph, probs: torch.Tensor, length: int):
        n = graph.num_tokens
        probs = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
        if probs.numel() != n**length:
            raise ValueError(f"probs must hold N^L = {n}^{length} = {n ** length} weights, got {probs.numel()}")
        if bool(torch.any(probs < 0)) or not float(probs.sum()) > 0:
            raise ValueError("probs must be non-negative with a positive sum")
        self.graph = graph
        self.length = length
        self.probs = (probs / probs.sum()).reshape([n] * length)

    @classmethod
    def random(cls, graph: Graph, length: int, generator: torch.Generator | None = None) -> "SequenceOracle":
        """A flat-Dirichlet random distribution over the N^L sequences (normalised Exp(1) weights)."""
        weights = torch.empty(graph.num_tokens**length, dtype=torch.float64).exponential_(generator=generator)
        return cls(graph, weights, length)

    # ----------------------------------------------------------------- clean distribution
    @property
    def sequences(self) -> torch.Tensor:
        """All N^L clean sequences in lexicographic order, Long[N^L, L]."""
        grids = torch.meshgrid(*[torch.arange(self.graph.num_tokens)] * self.length, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)

    def _codes(self, x: torch.Tensor, base: int) -> torch.Tensor:
        powers = base ** torch.arange(self.length - 1, -1, -1, device=x.device)
        return (x * powers).sum(-1)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """log p0(x0) for clean sequences Long[..., L], [...]."""
        self.graph.check_clean(x0)
        return torch.log(self.probs.reshape(-1).to(x0.device)[self._codes(x0, self.graph.num_tokens)])

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """num exact draws from p0, Long[num, L]."""
        index = torch.multinomial(self.probs.reshape(-1), num, replacement=True, generator=generator)
        return self.sequences[index]

    def total_variation(self, samples: torch.Tensor) -> float:
        """Total variation between the empirical distribution of samples Long[M, L] and p0."""
        self.graph.check_clean(samples.cpu(), "samples")
        counts = torch.bincount(self._codes(samples.cpu(), self.graph.num_tokens), minlength=self.probs.numel())
        return 0.5 * float((counts.double() / samples.shape[0] - self.probs.reshape(-1)).abs().sum())

    # ----------------------------------------------------------------- noised marginals
    def marginal(self, sigma_bar: float) -> torch.Tensor:
        """p_t over all S^L noised sequences at total noise sigma_bar, [S] * L, float64."""
        sigma = torch.tensor([float(sigma_bar)], dtype=torch.float64)
        return self._marginals(sigma)[0].reshape([self.graph.num_states] * self.length)

    def _marginals(self, sigma_bar: torch.Tensor) -> torch.Tensor:
        """p_t for each of sigma_bar [U], flattened over noised sequences: [U, S^L]."""
        n = self.graph.num_tokens
        rows = self.graph.transition(torch.arange(n).expand(len(sigma_bar), n), sigma_bar[:, None])  # [U, N, S]
        p = self.probs.expand(len(sigma_bar), *self.probs.shape)
        for _ in range(self.length):  # contract each clean axis with the per-token kernel
            p = torch.einsum("ua...,uas->u...s", p, rows)
        return p.reshape(len(sigma_bar), -1)

    def _log_marginals(self, sigma_bar: torch.Tensor):
        values, inverse = torch.unique(sigma_bar.detach().cpu().to(torch.float64), return_inverse=True)
        return torch.log(self._marginals(values)).to(sigma_bar.device), inverse.to(sigma_bar.device)

    def log_marginal(self, x: torch.Tensor, sigma_bar: float | torch.Tensor) -> torch.Tensor:
        """log p_t(x) for noised sequences Long[B, L]; sigma_bar a float or [B]."""
        self.graph.check_tokens(x)
        sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float64, device=x.device).expand(x.shape[0])
        table, inverse = self._log_marginals(sigma_bar)
        return table[inverse, self._codes(x, self.graph.num_states)]

    def score_fn(self, x_t: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        """Exact log-ratios log p_t(x_t^{i<-y}) - log p_t(x_t), [B, L, S] float64 (0 at y = x_t_i)."""
        self.graph.check_tokens(x_t, "x_t")
        if x_t.dim() != 2 or x_t.shape[1] != self.length:
            raise ValueError(f"x_t must be Long[B, {self.length}], got shape {list(x_t.shape)}")
        sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float64, device=x_t.device).expand(x_t.shape[0])
        table, inverse = self._log_marginals(sigma_bar)
        s = self.graph.num_states
        weights = s ** torch.arange(self.length - 1, -1, -1, device=x_t.device)  # [L]
        code = self._codes(x_t, s)  # [B]
        states = torch.arange(s, device=x_t.device)
        neighbours = code[:, None, None] + (states[None, None, :] - x_t[:, :, None]) * weights[None, :, None]
        log_p = table[inverse]  # [B, S^L]
        log_neighbours = log_p.gather(1, neighbours.reshape(x_t.shape[0], -1)).reshape(*x_t.shape, s)
        return log_neighbours - log_p.gather(1, code[:, None])[:, :, None]
