"""Infill for ``DiffusionPipeline``: fill a template's gaps by clamped sampling, and for gaps of unknown length
try every combination of lengths and keep the one with the lowest likelihood bound per token.

Gaps of unknown length. A gap ``{{lo..hi}}`` (or ``range(lo, hi + 1)`` in a list) has candidate lengths
lo..hi; with several such gaps every combination is a candidate (at most 64,
``gap_length_candidates``). Each candidate is filled ``num_samples`` times and each filled token
sequence (given tokens and fill, as the model saw it) is scored with the likelihood bound
(``ddlm.likelihood.nll_bound``, ``num_t`` times, the same generator). The candidates are compared by
the bound on -log p of the *whole* filled sequence divided by its number of tokens (mean over the
candidate's fills), and the lowest wins: its ``num_samples`` texts are returned. Why per token of the
whole sequence: a diffusion model is a separate distribution for each sequence length, and a longer gap
adds tokens, so the total -log p grows with the gap (totals pick the shortest gap almost always);
dividing by the filled tokens only would leave the given text's cost in the numerator and favour long
gaps. The per-token rate of the whole sequence (what perplexity reports) compares the candidates on the
same footing. It is a comparison of *upper bounds*: exact only where the bound is tight (exact ratios
with the exact terminal marginal), otherwise a candidate with a looser bound can lose to a worse one;
each value carries its Monte Carlo standard error, and differences within a few of them are not
resolved (raise ``num_t``). With ``return_candidates`` a template without ranges is one scored candidate.
"""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count
from ..likelihood.bounds import nll_bound
from .generation import resolve_generator
from .templates import Segment, Template


@dataclasses.dataclass
class InfillCandidate:
    """One combination of gap lengths tried by ``DiffusionPipeline.infill``: its fills and their likelihood bound.

    bound: the mean over the fills of the upper bound on -log p(filled token sequence), nats;
    stderr: its Monte Carlo standard error; per_token / per_token_stderr: both divided by the
    sequence's token count (given + filled), the value candidates are compared by.
    """

    lengths: tuple[int, ...]
    texts: list[str]
    num_tokens: int
    bound: float
    stderr: float
    num_t: int

    @property
    def per_token(self) -> float:
        return self.bound / self.num_tokens

    @property
    def per_token_stderr(self) -> float:
        return self.stderr / self.num_tokens


def fill(pipe, template: Template, num_samples: int, steps: int, predictor: str, **kwargs) -> tuple[list[str], torch.Tensor]:
    """Texts of ``num_samples`` fills of a template with fixed gap lengths, and their token ids Long[num_samples, L]."""
    ids, given, spans = pipe.encode_template(template)
    samples = pipe.sample(num_samples, len(ids), steps, predictor, x_init=ids, fixed=given, **kwargs).cpu()
    texts = []
    for row in samples:
        pieces, position = [], 0
        for text, n in spans:
            pieces.append(text if text is not None else pipe.decode(row[position:position + n]))
            position += n
        texts.append("".join(pieces))
    return texts, samples


def with_lengths(segments: list[Segment], lengths: tuple[int, ...]) -> list[str | int]:
    """``segments`` with each gap given its length from ``lengths``, in order."""
    lengths_left = iter(lengths)
    return [s if isinstance(s, str) else next(lengths_left) for s in segments]


def score_candidate(pipe, segments, lengths, num_samples, steps, predictor, num_t, generator, kwargs) -> InfillCandidate:
    """Fill ``segments`` with gap ``lengths`` ``num_samples`` times and bound each filled sequence ``num_t`` times."""
    texts, ids = fill(pipe, with_lengths(segments, lengths), num_samples, steps, predictor, generator=generator, **kwargs)
    bound = nll_bound(pipe.score_fn, pipe.graph, pipe.noise, ids.to(pipe.device), num_t, generator, batch_size=kwargs.get("batch_size"))
    total = (bound.integral + bound.prior).double().cpu()
    stderr = float(bound.stderr.double().square().sum().sqrt()) / num_samples
    return InfillCandidate(tuple(lengths), texts, ids.shape[1], float(total.mean()), stderr, num_t)


def infill(pipe, template: Template, num_samples: int, steps: int, predictor: str, *, num_t: int, return_candidates: bool,
           **kwargs) -> list[str] | tuple[list[str], list[InfillCandidate]]:
    """``DiffusionPipeline.infill``: one fill for fixed gap lengths, else the best of every length combination."""
    check_count("num_t", num_t)
    if not isinstance(return_candidates, bool):
        raise ValueError(f"return_candidates must be True or False, got {return_candidates!r}")
    segments = pipe.parse_template(template)
    if not return_candidates and not any(isinstance(s, range) for s in segments):
        return fill(pipe, segments, num_samples, steps, predictor, **kwargs)[0]
    check_count("num_samples", num_samples)
    generator = resolve_generator(kwargs.pop("generator", None), kwargs.pop("seed", None), pipe.device)
    progress = kwargs.get("progress", True)
    candidates = [score_candidate(pipe, segments, lengths, num_samples, steps, predictor, num_t, generator, kwargs)
                  for lengths in tqdm(pipe.gap_length_candidates(segments), desc="gap lengths", disable=not progress)]
    best = min(candidates, key=lambda c: c.per_token)
    return (best.texts, candidates) if return_candidates else best.texts
