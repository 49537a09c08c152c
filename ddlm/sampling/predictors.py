"""The predictors of ``ddlm.sampling.sample``: one small object per sampler, each with its own argument checks.

Grid predictors (``Euler``, ``TauLeaping``, ``Analytic``, and ``Denoise`` for the final step) make
one reverse step of the rows that can move (``step``); the loop (``ddlm.sampling.loop``) owns the
time grid, the score evaluations and their cache, clamped positions, correctors, progress and
stats. ``FirstHitting`` and ``Confidence`` choose their own event times or unmasking steps and run
to the end (``run``). ``predictor_from_options`` builds one from ``sample``'s keywords; passing the
object itself draws the same tokens.
"""

from __future__ import annotations

import torch

from ..core.choices import ABSORBING_ONLY, PREDICTORS
from ..core.processes import Graph
from .decoding import check_confidence_values, sample_confidence
from .first_hitting import sample_first_hitting
from .steps import reverse_step

CONFIDENCE_OPTIONS = ("confidence", "unmask_schedule", "threshold", "entropy_bound")


class Predictor:
    """Base of the predictors: ``name`` (one of ``PREDICTORS`` for the built-in ones) and ``check``."""

    name = ""
    absorbing_only = False

    @classmethod
    def check_graph(cls, graph: Graph) -> None:
        """ValueError unless this predictor can run on graph."""
        if cls.absorbing_only and graph.mask_id is None:
            raise ValueError(f"predictor={cls.name!r} needs an absorbing process, got {graph!r}; allowed for it: "
                             f"{tuple(p for p in PREDICTORS if p not in ABSORBING_ONLY)}")

    def check(self, graph: Graph, denoise: bool) -> None:
        """ValueError unless this predictor can run on graph with this ``denoise``."""
        self.check_graph(graph)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GridPredictor(Predictor):
    """A predictor that steps on the loop's time grid t_k = linspace(1, t_min, steps + 1): ``kind`` of ``reverse_step``."""

    kind = ""

    def step(self, graph: Graph, x: torch.Tensor, log_score: torch.Tensor, dt: float, rate: float, dsigma: float, *,
             impl: str = "torch", dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None,
             decoding=None) -> torch.Tensor:
        """One reverse step of the rows x Long[R] given log_score [R, S]: Long[R].

        dt, rate: the time step and sigma(t) (euler, tau_leaping); dsigma: the drop of sigma_bar
        (analytic, denoise). decoding: a transform of the unmasking draw's log-weights, or None.
        """
        return reverse_step(graph, x, log_score, self.kind, dt, rate, dsigma, impl, dtype, generator, decoding)


class Euler(GridPredictor):
    """P(y) = dt R(x -> y) for y != x, stay with the rest (``euler_step``)."""

    name = kind = "euler"


class TauLeaping(GridPredictor):
    """Rates frozen over the step, all positions jump in parallel (``tau_leaping_step``)."""

    name = kind = "tau_leaping"


class Analytic(GridPredictor):
    """Tweedie tau-leaping, exact per position when the scores are (``analytic_step``)."""

    name = kind = "analytic"


class Denoise(GridPredictor):
    """The final step: analytic down to sigma_bar = 0, never onto the mask (the loop's ``denoise``)."""

    name = kind = "denoise"


class FirstHitting(Predictor):
    """Exact event-by-event unmasking, one score evaluation per event (``ddlm.sampling.first_hitting``); absorbing only."""

    name = "first_hitting"
    absorbing_only = True

    def run(self, loop, noise, x: torch.Tensor, *, steps: int, t_min: float, denoise: bool, progress: bool) -> torch.Tensor:
        """Unmask x Long[B, L] to the end: Long[B, L]. ``steps`` is unused; loop: a ``ddlm.sampling.loop.Loop``."""
        return sample_first_hitting(loop.scores, loop.graph, noise, x, loop.fixed, t_min=t_min, denoise=denoise,
                                    dtype=loop.dtype, generator=loop.generator, progress=progress, shape=loop.decoding)


class Confidence(Predictor):
    """Confidence-based parallel decoding (``ddlm.sampling.decoding.sample_confidence``); absorbing only, denoise=True.

    ``steps`` steps each score every masked free position once and unmask the most confident by
    ``confidence`` ("max_prob" (None), "margin", "entropy", "prob" (of the drawn token: LLaDA
    low-confidence remasking), "random"), as many as ``unmask_schedule`` ("linear" (None) or
    "cosine") says; or with ``threshold`` (in [0, 1)) every position more confident than it
    (Fast-dLLM), or with ``entropy_bound`` (>= 0 nats) the most confident while their entropies
    sum within it (EB-Sampler), at least one per step (``steps`` unused). It ends with no masked
    position; ``impl`` is unused. Exact (with exact ratios, no decoding) only with one position per
    step and a confidence other than "prob".
    """

    name = "confidence"
    absorbing_only = True

    def __init__(self, confidence: str | None = None, unmask_schedule: str | None = None, threshold: float | None = None,
                 entropy_bound: float | None = None):
        check_confidence_values(confidence, unmask_schedule, threshold, entropy_bound)
        self.confidence, self.unmask_schedule = confidence, unmask_schedule
        self.threshold, self.entropy_bound = threshold, entropy_bound

    def check(self, graph: Graph, denoise: bool) -> None:
        super().check(graph, denoise)
        if denoise is not True:
            raise ValueError("denoise must be True for predictor='confidence': it always unmasks every position")

    def run(self, loop, noise, x: torch.Tensor, *, steps: int, t_min: float, denoise: bool, progress: bool) -> torch.Tensor:
        """Unmask every masked free position of x Long[B, L] in ``steps`` steps (or adaptively): Long[B, L]."""
        return sample_confidence(loop.scores, loop.graph, noise, x, loop.fixed, steps=steps, confidence=self.confidence,
                                 unmask_schedule=self.unmask_schedule, threshold=self.threshold,
                                 entropy_bound=self.entropy_bound, shape=loop.decoding, t_min=t_min, dtype=loop.dtype,
                                 generator=loop.generator, progress=progress)

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={getattr(self, k)!r}" for k in CONFIDENCE_OPTIONS if getattr(self, k) is not None)
        return f"Confidence({given})"


BUILT_IN = {cls.name: cls for cls in (Euler, TauLeaping, Analytic, FirstHitting, Confidence)}


def check_predictor(graph: Graph, predictor) -> None:
    """ValueError unless predictor is one of ``PREDICTORS`` or a ``Predictor``, and can run on graph."""
    if isinstance(predictor, Predictor):
        predictor.check_graph(graph)
        return
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    BUILT_IN[predictor].check_graph(graph)


def predictor_from_options(graph: Graph, predictor, denoise: bool, **confidence_options) -> Predictor:
    """The ``Predictor`` that ``sample(predictor=..., confidence=..., ...)`` names, checked against graph and denoise.

    predictor: a name of ``PREDICTORS`` or a ``Predictor`` (then the confidence options must be None).
    """
    given = [name for name in CONFIDENCE_OPTIONS if confidence_options.get(name) is not None]
    if given and isinstance(predictor, Predictor):
        raise ValueError(f"{', '.join(given)} are options of the Confidence predictor: pass Confidence({given[0]}=...) "
                         f"instead of predictor={predictor!r}")
    if given and predictor != "confidence":
        raise ValueError(f"{', '.join(given)} only apply to predictor='confidence', got predictor={predictor!r}")
    if not isinstance(predictor, Predictor):
        predictor = Confidence(**confidence_options) if predictor == "confidence" else BUILT_IN[predictor]()
    predictor.check(graph, denoise)
    return predictor
