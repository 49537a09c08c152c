"""First-hitting sampling of absorbing processes: one exact unmasking event per network call.

Under absorbing noise a position is masked at time t with probability m(t) = 1 - e^-sigma_bar(t).
In the reverse process every masked position unmasks at the same rate, whatever the tokens:
sum_y R(mask -> y) = sigma(t) sum_{y real} s_y = sigma(t) / (e^sigma_bar - 1) for exact ratios
(s_y = p(y | x_t) / (e^sigma_bar - 1)), whose integral from s to t is log m(t) - log m(s)
(d sigma_bar / (e^sigma_bar - 1) = d log(1 - e^-sigma_bar)). So a masked position still masked
at t stays masked down to s < t with probability m(s) / m(t), independently of the others and of
the tokens, and with n masked positions the next unmasking happens at the s with

    (m(s) / m(t))^n = u,  u ~ U(0, 1):   m(s) = m(t) u^(1/n),  sigma_bar(s) = -log(1 - m(s)).

The position is uniform among the n (equal rates) and its token is drawn from the reverse rates
at s, proportional to s_y(x, sigma_bar(s)) over the real tokens, i.e. from p(y | x_t) (the
sigma_bar factor cancels). Between events nothing changes. With exact ratios the draws are
exact for any schedule; no time grid is involved, and since score functions read sigma_bar,
not t, no inverse of the schedule is needed either (events are tracked in sigma_bar and m).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core.processes import Graph
from .score_cache import ScoreEvaluator


def sample_first_hitting(
    evaluator: ScoreEvaluator, graph: Graph, noise, x: torch.Tensor, fixed: torch.Tensor | None, *,
    t_min: float, denoise: bool, dtype: torch.dtype, generator: torch.Generator | None, progress: bool, shape=None,
) -> torch.Tensor:
    """Unmask x Long[B, L] (absorbing; masked positions free unless ``fixed``) one event at a time: Long[B, L].

    Every sequence runs its own event times from sigma_bar(1) down; one ``evaluator`` call scores
    the chosen position of every sequence still running. ``denoise=True`` continues until no
    free position is masked (events below t_min are scored at sigma_bar(t_min)); ``denoise=False``
    stops each sequence at its first event time below t_min, leaving those positions masked.
    shape: None, or a ``ddlm.sampling.decoding.Decoding``: each event's token is drawn from
    the reshaped p(y | x_t) (temperature / top-k / top-p); event times and positions are unchanged.
    """
    if graph.mask_id is None:
        raise ValueError(f"predictor='first_hitting' needs an absorbing process, got {graph!r}; "
                         "allowed for it: 'euler', 'tau_leaping', 'analytic'")
    x = x.clone()
    batch, length = x.shape
    device = x.device
    free = x == graph.mask_id
    if fixed is not None:
        free &= ~fixed
    n = free.sum(1)
    start = noise.total(torch.ones((), dtype=torch.float64)).item()
    floor = noise.total(torch.tensor(t_min, dtype=torch.float64)).item()
    m = torch.full((batch,), -torch.expm1(torch.tensor(-start, dtype=torch.float64)).item(), dtype=torch.float64, device=device)
    running = n > 0
    bar = tqdm(total=int(n.max()) if batch else 0, desc="sampling (first_hitting)", disable=not progress, leave=None)  # leave=None: kept alone, cleared when nested under another bar (no blank lines)
    while bool(running.any()):
        active = running.nonzero().squeeze(1)
        u = torch.rand(active.shape, dtype=torch.float64, device=device, generator=generator)
        m_next = m[active] * u ** (1.0 / n[active].double())
        sigma_next = -torch.log1p(-m_next)
        if not denoise:
            stop = sigma_next < floor
            running[active[stop]] = False
            active, m_next, sigma_next = active[~stop], m_next[~stop], sigma_next[~stop]
            if not active.numel():
                break
        # the event's position: uniform among the masked free positions of each running sequence
        pick = (torch.rand(active.shape, dtype=torch.float64, device=device, generator=generator) * n[active].double()).long()
        pick = torch.minimum(pick, n[active] - 1)
        position = (free[active].cumsum(1) > pick[:, None]).int().argmax(1)
        rows = torch.zeros_like(free)
        rows[active, position] = True
        sigma = torch.full((batch,), floor, dtype=torch.float64, device=device)
        sigma[active] = sigma_next.clamp_min(floor)
        log_score = evaluator(x, sigma, rows)  # [len(active), S], rows in ascending sequence order
        weights = log_score[:, : graph.mask_id].to(dtype)
        weights = torch.exp(weights - weights.amax(-1, keepdim=True)) if shape is None else shape(weights)
        if not bool(torch.isfinite(weights).all()) or bool((weights.sum(-1) <= 0).any()):
            raise ValueError("the score function gave a masked position no finite positive weight on any real token")
        races = torch.empty_like(weights).exponential_(generator=generator)
        x[active, position] = (weights / races).argmax(-1)
        free[active, position] = False
        n[active] -= 1
        m[active] = m_next
        running &= n > 0
        bar.update(1)
        bar.set_postfix(calls=evaluator.calls, refresh=False)
    bar.close()
    return x
