"""Score evaluation for samplers: network-call counting and exact caching for time-independent scores.

The time-independent protocol. A score function that sets the attribute
``time_independent = True`` declares that, for an absorbing process, its log-scores are

    log s(x, sigma_bar)[i, y] = f(x)[i, y] - log(e^sigma_bar - 1)   at masked positions i, real y,

with f not depending on sigma_bar, and that every other entry (the mask column of masked rows,
which is the current token and 0, and every row at a real token) does not depend on sigma_bar
either. ``DDLMForDiffusion`` with ``time_conditioning=False`` declares it (f = log p(y | x_t));
so does any callable that sets the attribute. The exact ratios of an absorbing process have this
form at masked positions (see ``ddlm.models.modeling.time_independent_log_scores``).

For such a score function the sampler evaluates it at sigma_bar = log 2, where
log(e^sigma_bar - 1) = 0, so the output is f itself, and applies the factor of the step's
sigma_bar in float64 (``apply_time_factor``). With the cache on, f of a sequence whose tokens
did not change since its last evaluation is reused, so steps in which nothing moved call no
network. Cached and uncached runs compute the same numbers the same way, so the same seed gives
exactly the same draws, provided the score function's rows do not depend on which other
sequences share its batch (true of the exact oracles; a network may differ in the last bits
between batch shapes on some backends).
"""

from __future__ import annotations

import math

import torch

from ..core.processes import Graph
from ..core.score import ScoreFn, evaluate_score

REFERENCE_SIGMA_BAR = math.log(2.0)  # log(e^sigma_bar - 1) = 0 here: a time-independent score_fn returns f


def is_time_independent(score_fn) -> bool:
    """Whether ``score_fn`` declares the time-independent protocol (``score_fn.time_independent is True``)."""
    return getattr(score_fn, "time_independent", False) is True


def time_factor(sigma_bar: torch.Tensor) -> torch.Tensor:
    """log(e^sigma_bar - 1) in float64, elementwise."""
    return torch.log(torch.expm1(sigma_bar.double()))


def apply_time_factor(graph: Graph, f: torch.Tensor, x: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
    """log s = f - log(e^sigma_bar - 1) on the real-token columns of masked rows, everything else as is.

    f [..., S] in any float dtype (the result keeps it; the subtraction runs in float64), x Long[...]
    the rows' current tokens, sigma_bar broadcasting against x.
    """
    out = f.clone()
    masked = x == graph.mask_id
    if bool(masked.any()):
        factor = time_factor(sigma_bar).to(x.device).expand(x.shape)[masked]
        out[masked, : graph.mask_id] = (f[masked, : graph.mask_id].double() - factor[:, None]).to(f.dtype)
    return out


class ScoreEvaluator:
    """What a sampler calls instead of the score function: ``evaluator(x, sigma_bar, rows)``.

    x Long[B, L], sigma_bar [B] float64, rows Bool[B, L] (-> [R, S], the rows of ``x[rows]``) or
    None (-> [B, L, S]). Counts ``calls`` (score-function calls), ``sequences`` (sequences passed to
    them: what a network's forward costs) and ``positions`` (rows scored).
    A time-independent score function is evaluated at sigma_bar = log 2 and the factor of the
    step applied (module docstring); with ``cache=True`` a sequence's f is reused while its
    tokens stay the same, and only the requested rows of changed sequences are evaluated.
    """

    def __init__(self, score_fn: ScoreFn, graph: Graph, cache: bool = False):
        self.score_fn = score_fn
        self.graph = graph
        self.time_independent = is_time_independent(score_fn)
        if self.time_independent and graph.mask_id is None:
            raise ValueError(f"score_fn.time_independent = True is a protocol of absorbing processes; {graph!r} has no mask "
                             "state (unset the attribute for a uniform process)")
        if cache and not self.time_independent:
            raise ValueError("cache=True needs a score function that declares score_fn.time_independent = True (it does not "
                             "read sigma_bar beyond the analytic factor); allowed: cache=None (the default: on exactly for such "
                             "score functions) or cache=False")
        self.cache = cache
        self.calls = 0
        self.sequences = 0
        self.positions = 0
        self._x = self._f = self._valid = None

    def _evaluate(self, x: torch.Tensor, sigma_bar: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        self.sequences += x.shape[0]
        self.positions += x.numel() if rows is None else int(rows.sum())
        return evaluate_score(self.score_fn, x, sigma_bar, self.graph.num_states, positions=rows)

    def __call__(self, x: torch.Tensor, sigma_bar: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if not self.time_independent:
            return self._evaluate(x, sigma_bar, rows)
        reference = torch.full_like(sigma_bar, REFERENCE_SIGMA_BAR, dtype=torch.float64)
        want = torch.ones_like(x, dtype=torch.bool) if rows is None else rows
        per_row_sigma = sigma_bar.double()[:, None].expand(x.shape)
        if not self.cache:
            f = self._evaluate(x, reference, want).reshape(-1, self.graph.num_states)
        else:
            if self._x is None or self._x.shape != x.shape:
                self._x, self._valid = x.clone(), torch.zeros_like(x, dtype=torch.bool)
            else:
                self._valid &= ~(x != self._x).any(1, keepdim=True)  # a sequence that changed loses every cached row
                self._x.copy_(x)
            need = want & ~self._valid
            if bool(need.any()):
                seqs = need.any(1).nonzero().squeeze(1)
                fresh = self._evaluate(x[seqs], reference[seqs], need[seqs])
                if self._f is None:
                    self._f = fresh.new_zeros(x.numel(), self.graph.num_states)
                self._f[need.reshape(-1).nonzero().squeeze(1)] = fresh.to(self._f.dtype)
                self._valid |= need
            f = self._f[want.reshape(-1).nonzero().squeeze(1)]
        log_score = apply_time_factor(self.graph, f, x[want], per_row_sigma[want])
        return log_score.view(*x.shape, -1) if rows is None else log_score
