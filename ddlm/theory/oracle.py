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

from ..core.processes import Graph


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


class ConditionalSequenceOracle:
    """Class-conditional laws p(x0 | c) over the N^L clean sequences with a class prior p(c), all exact under ``graph``.

    probs: [C, N^L] (or [C, N, ..., N]) non-negative weights, row c normalised here to p(x0 | c);
    class_probs: [C] prior p(c) (default uniform), normalised here. ``conditional(c)`` and
    ``unconditional`` (p(x0) = sum_c p(c) p(x0 | c)) are ``SequenceOracle``s with exact ratios;
    ``log_posterior`` is the exact classifier of noisy sequences, log p_t(c | x_t) =
    log p(c) + log p_t(x_t | c) - log p_t(x_t). ``score_fn`` follows the class-conditional model's
    contract (``class_labels``, the null class ``num_classes``) so it can stand in for one.
    """

    def __init__(self, graph: Graph, probs: torch.Tensor, length: int, class_probs: torch.Tensor | None = None):
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.dim() < 1 or probs.shape[0] < 1:
            raise ValueError(f"probs must be [C, N^L] weights, one row per class, got shape {list(probs.shape)}")
        self.conditionals = [SequenceOracle(graph, row, length) for row in probs.reshape(probs.shape[0], -1)]
        num_classes = len(self.conditionals)
        if class_probs is None:
            class_probs = torch.ones(num_classes, dtype=torch.float64)
        class_probs = torch.as_tensor(class_probs, dtype=torch.float64).reshape(-1)
        if class_probs.numel() != num_classes or bool(torch.any(class_probs < 0)) or not float(class_probs.sum()) > 0:
            raise ValueError(f"class_probs must be {num_classes} non-negative weights with a positive sum, got {class_probs.tolist()}")
        self.graph = graph
        self.length = length
        self.class_probs = class_probs / class_probs.sum()
        joint = torch.stack([c.probs for c in self.conditionals]) * self.class_probs.reshape(-1, *[1] * length)
        self.unconditional = SequenceOracle(graph, joint.sum(0), length)

    @classmethod
    def random(cls, graph: Graph, length: int, num_classes: int, generator: torch.Generator | None = None) -> "ConditionalSequenceOracle":
        """Flat-Dirichlet random p(x0 | c) for each of num_classes classes, uniform p(c)."""
        weights = torch.empty(num_classes, graph.num_tokens**length, dtype=torch.float64).exponential_(generator=generator)
        return cls(graph, weights, length)

    @property
    def num_classes(self) -> int:
        return len(self.conditionals)

    def conditional(self, label: int) -> SequenceOracle:
        """p(x0 | c = label) as a ``SequenceOracle``."""
        if not (isinstance(label, int) and 0 <= label < self.num_classes):
            raise ValueError(f"label must be a class id in [0, {self.num_classes}), got {label!r}")
        return self.conditionals[label]

    def sharpened(self, label: int, scale: float) -> SequenceOracle:
        """The law ~ p(x0 | c)^scale p(x0)^(1 - scale) (what guidance with scale > 1 is often said to sample)."""
        p_c, p = self.conditional(label).probs, self.unconditional.probs
        log_w = torch.where(p_c > 0, scale * torch.log(p_c) + (1 - scale) * torch.log(p), torch.full_like(p, -torch.inf))
        return SequenceOracle(self.graph, torch.exp(log_w - log_w.max()), self.length)

    def _log_tables(self, sigma_bar: torch.Tensor):
        """log p_t(x | c) for every noised x, classes 0..C-1 and the null class C (the unconditional law): a table
        [U, C + 1, S^L] over the U distinct values of sigma_bar [B], and each sequence's index into U, Long[B]."""
        sigma = sigma_bar.detach().cpu().to(torch.float64)
        if bool((sigma == sigma[:1]).all()):  # the samplers' usual call: one noise level for the batch
            values, inverse = sigma[:1], torch.zeros(sigma.shape, dtype=torch.long)
        else:
            values, inverse = torch.unique(sigma, return_inverse=True)
        oracles = self.conditionals + [self.unconditional]
        table = torch.log(torch.stack([oracle._marginals(values) for oracle in oracles], 1))
        return table.to(sigma_bar.device), inverse.to(sigma_bar.device)

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.unconditional._codes(x, self.graph.num_states)

    def log_posterior(self, x_t: torch.Tensor, sigma_bar: float | torch.Tensor) -> torch.Tensor:
        """The exact noisy classifier log p_t(c | x_t), [B, C] float64, for x_t Long[B, L] and sigma_bar a float or [B]."""
        self.graph.check_tokens(x_t, "x_t")
        sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float64, device=x_t.device).expand(x_t.shape[0])
        table, inverse = self._log_tables(sigma_bar)  # [U, C + 1, S^L]
        log_joint = table[:, : self.num_classes] + torch.log(self.class_probs).to(table.device)[:, None]
        posterior = log_joint - torch.logsumexp(log_joint, 1, keepdim=True)  # [U, C, S^L], every noised sequence
        return posterior[inverse, :, self._codes(x_t)]

    def score_fn(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-ratios of p_t(. | c) per sequence, [B, L, S] float64. class_labels: Long[B] or a scalar in
        [0, C] (C = ``num_classes``, the null class: the unconditional ratios); None: the null class."""
        self.graph.check_tokens(x_t, "x_t")
        if x_t.dim() != 2 or x_t.shape[1] != self.length:
            raise ValueError(f"x_t must be Long[B, {self.length}], got shape {list(x_t.shape)}")
        batch, s = x_t.shape[0], self.graph.num_states
        labels = torch.full((batch,), self.num_classes) if class_labels is None else torch.as_tensor(class_labels).cpu()
        labels = labels.expand(batch) if labels.dim() == 0 else labels
        if tuple(labels.shape) != (batch,) or bool(((labels < 0) | (labels > self.num_classes)).any()):
            raise ValueError(f"class_labels must be [{batch}] class ids in [0, {self.num_classes}], got {labels.tolist()}")
        sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float64, device=x_t.device).expand(batch)
        table, inverse = self._log_tables(sigma_bar)  # [U, C + 1, S^L]
        weights = s ** torch.arange(self.length - 1, -1, -1, device=x_t.device)
        if table.shape[0] == 1:  # one noise level: a table of every sequence's ratios, then one lookup
            states = self._all_noised(x_t.device)
            codes = torch.arange(s**self.length, device=x_t.device)
            neighbours = codes[:, None, None] + (torch.arange(s, device=x_t.device) - states[:, :, None]) * weights[:, None]
            ratios = table[:, :, neighbours] - table[:, :, :, None, None]  # [1, C + 1, S^L, L, S]
            return ratios[inverse, labels.to(x_t.device), self._codes(x_t)]
        log_p = table[inverse, labels.to(x_t.device)]  # [B, S^L]
        code = self._codes(x_t)
        neighbours = code[:, None, None] + (torch.arange(s, device=x_t.device) - x_t[:, :, None]) * weights[:, None]
        log_neighbours = log_p.gather(1, neighbours.reshape(batch, -1)).reshape(batch, self.length, s)
        return log_neighbours - log_p.gather(1, code[:, None])[:, :, None]

    def _all_noised(self, device) -> torch.Tensor:
        """All S^L noised sequences in lexicographic order, Long[S^L, L]."""
        grids = torch.meshgrid(*[torch.arange(self.graph.num_states, device=device)] * self.length, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)
