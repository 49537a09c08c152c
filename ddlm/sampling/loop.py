"""The sampling loop: ``sample`` runs a predictor (``ddlm.sampling.predictors``) on the time grid, or to the end.

The loop owns what every predictor shares: the starting tokens and clamped positions, the score
evaluator (``ddlm.sampling.score_cache``: call counts and the exact cache), the time grid
``t_k = linspace(1, t_min, steps + 1)``, the correctors (``ddlm.sampling.correctors``), the decoding
transform (``ddlm.sampling.decoding``), the progress bar and the stats. The reverse steps themselves
are in ``ddlm.sampling.steps`` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count, is_number
from ..core.choices import ABSORBING_ONLY, PREDICTORS  # noqa: F401 (re-exported)
from ..core.dse_backends import triton_available
from ..core.processes import Graph, check_graph
from ..core.schedules import check_schedule
from ..core.score import ScoreFn
from .correctors import GRID_PREDICTORS, Corrector, correctors_from_options
from .decoding import Decoding, decoding_from_options
from .predictors import Denoise, GridPredictor, Predictor, check_predictor, predictor_from_options
from .score_cache import ScoreEvaluator, is_time_independent
from .steps import IMPLS, movable

# Re-exported: ``ddlm.sampling`` (once this module) re-exports this module's public names, and the CLI and
# ``ddlm.evaluation`` import some of them from here.
from .correctors import PredictorCorrector, Remask, corrector_step, remask_probability, remask_tokens  # noqa: F401
from .decoding import Temperature, TopK, TopP, sample_confidence  # noqa: F401
from .first_hitting import sample_first_hitting  # noqa: F401
from .predictors import Analytic, Confidence, Euler, FirstHitting, TauLeaping  # noqa: F401
from .steps import analytic_step, euler_step, reverse_step, sample_categorical, tau_leaping_step  # noqa: F401


def _check_args(graph: Graph, noise, shape, steps, predictor, x_init, fixed):
    check_graph(graph)
    check_schedule(noise)
    check_predictor(graph, predictor)
    check_count("steps", steps)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ValueError(f"shape must be (batch, length) of positive ints, got {shape!r}")
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"shape must be (batch, length) of positive ints, got {shape!r}")
    if x_init is not None:
        graph.check_tokens(x_init, "x_init")
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {list(shape)}, got {list(x_init.shape)}")
    if fixed is not None:
        if x_init is None:
            raise ValueError("fixed needs x_init: the tokens to clamp the fixed positions to")
        if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool or tuple(fixed.shape) != shape:
            got = f"{fixed.dtype} {list(fixed.shape)}" if isinstance(fixed, torch.Tensor) else type(fixed).__name__
            raise ValueError(f"fixed must be a Bool tensor of shape {list(shape)}, got {got}")
        graph.check_clean(x_init[fixed], "x_init at fixed positions")
    return shape


def check_sampling_options(denoise, generator, dtype) -> None:
    """A ValueError naming the argument unless denoise is a bool, generator a torch.Generator or None and
    dtype torch.float32 or torch.float64 (the precision of the sampling arithmetic)."""
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise must be True or False, got {denoise!r:.80}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r:.80}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (the sampling arithmetic), got {dtype!r:.80}")


@dataclass(frozen=True)
class Grid:
    """The time grid: times t_k = linspace(1, t_min, steps + 1), totals sigma_bar(t_k), rates sigma(t_k); float64 [steps + 1]."""

    times: torch.Tensor
    totals: torch.Tensor
    rates: torch.Tensor

    @classmethod
    def make(cls, noise, steps: int, t_min: float) -> "Grid":
        times = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
        return cls(times, noise.total(times), noise.rate(times))


@dataclass
class Loop:
    """What the steps of one run share: the graph, the score evaluator, the clamped positions and the step options.

    x_init Long[B, L] and fixed Bool[B, L] (or None): positions clamped to x_init's tokens. decoding: a
    transform of the unmasking draw's log-weights [M, S] -> weights [M, S], or None.
    """

    graph: Graph
    scores: ScoreEvaluator
    x_init: torch.Tensor | None
    fixed: torch.Tensor | None
    impl: str
    dtype: torch.dtype
    generator: torch.Generator | None
    decoding: Decoding | None

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """x Long[B, L] with the fixed positions set to x_init's tokens."""
        return torch.where(self.fixed, self.x_init, x) if self.fixed is not None else x

    def step(self, predictor: GridPredictor, x: torch.Tensor, sigma_bar: float, dt: float, rate: float,
             dsigma: float) -> torch.Tensor:
        """Clamp x Long[B, L], score the rows that can move at sigma_bar and step them with predictor: Long[B, L]."""
        x = self.clamp(x)
        sigma = torch.full((x.shape[0],), sigma_bar, dtype=torch.float64, device=x.device)
        options = dict(impl=self.impl, dtype=self.dtype, generator=self.generator, decoding=self.decoding)
        if self.impl == "reference":  # every row scored and stepped
            return predictor.step(self.graph, x, self.scores(x, sigma, None), dt, rate, dsigma, **options)
        rows = movable(self.graph, x, self.fixed)
        if not bool(rows.any()):
            return x  # nothing can change: no score evaluation
        log_score = self.scores(x, sigma, rows)
        out = x.clone()
        out[rows] = predictor.step(self.graph, x[rows], log_score, dt, rate, dsigma, **options)
        return out

    def report(self, x: torch.Tensor, stats: dict | None) -> torch.Tensor:
        """x clamped, after filling stats (if a dict) with the evaluator's counts."""
        if stats is not None:
            s = self.scores
            stats.update(network_calls=s.calls, sequences_scored=s.sequences, positions_scored=s.positions, cache=s.cache)
        return self.clamp(x)


def run_grid(loop: Loop, predictor: GridPredictor, correctors: Sequence[Corrector], x: torch.Tensor, grid: Grid,
             denoise: bool, progress: bool) -> torch.Tensor:
    """x Long[B, L] through every step of the grid (correctors around each), then the final denoise: Long[B, L]."""
    steps = len(grid.times) - 1
    bar = tqdm(range(steps), desc=f"sampling ({predictor.name})", disable=not progress, leave=None)  # leave=None: kept alone, cleared when nested under another bar (no blank lines)
    for k in bar:
        start = None  # the sigma_bar the step starts from, if a corrector (Remask) raised it
        for corrector in correctors:
            x, raised = corrector.before_step(loop, x, grid, k)
            start = raised if raised is not None else start
        if start is not None:  # remasked: the reverse step from sigma_bar' = start; euler / tau_leaping constant dt * rate = decrement
            decrement = start - float(grid.totals[k + 1])
            x = loop.step(predictor, x, start, decrement, 1.0, decrement)
        else:
            x = loop.step(predictor, x, float(grid.totals[k]), float(grid.times[k] - grid.times[k + 1]), float(grid.rates[k]),
                          float(grid.totals[k] - grid.totals[k + 1]))
        for corrector in correctors:
            x = corrector.after_step(loop, x, grid, k)
        bar.set_postfix(calls=loop.scores.calls, refresh=False)
    if denoise:
        x = loop.step(Denoise(), x, float(grid.totals[-1]), 0.0, 0.0, float(grid.totals[-1]))
    return x


def _device_and_impl(impl: str, device, x_init: torch.Tensor | None) -> tuple[torch.device, str]:
    """The run's device (given, else x_init's, else CPU) and impl with "auto" resolved."""
    if device is None:
        device = x_init.device if x_init is not None else torch.device("cpu")
    device = torch.device(device)
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and triton_available(device) else "torch"
    elif impl == "triton" and not triton_available(device):
        raise RuntimeError(f"impl='triton' needs Triton and a CUDA device, or TRITON_INTERPRET=1; got {device}")
    return device, impl


def _score_evaluator(score_fn: ScoreFn, graph: Graph, cache, stats, impl, t_min, decoding) -> ScoreEvaluator:
    """The run's ``ScoreEvaluator``, after a ValueError naming the argument for bad cache / stats / impl / t_min
    or a decoding with impl 'reference'."""
    if cache not in (None, True, False):
        raise ValueError(f"cache must be None, True or False, got {cache!r}")
    if stats is not None and not isinstance(stats, dict):
        raise ValueError(f"stats must be a dict to fill, or None; got {type(stats).__name__}")
    scores = ScoreEvaluator(score_fn, graph, is_time_independent(score_fn) if cache is None else cache)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not (is_number(t_min) and 0 < t_min < 1):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    if decoding is not None and impl == "reference":
        raise ValueError("temperature / top_k / top_p need impl 'auto', 'torch' or 'triton', not 'reference' (the full-row "
                         "comparison path draws the plain law only)")
    return scores


# Long only in its signature (every keyword of the public contract, one a line) and docstring: the body
# resolves the keywords into parts and runs them (about 20 lines).
@torch.no_grad()
def sample(
    score_fn: ScoreFn,
    graph: Graph,
    noise,
    shape: Sequence[int],
    steps: int,
    predictor: str | Predictor = "analytic",
    denoise: bool = True,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    *,
    t_min: float = 1e-5,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: bool = True,
    impl: str = "auto",
    cache: bool | None = None,
    stats: dict | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    confidence: str | None = None,
    unmask_schedule: str | None = None,
    threshold: float | None = None,
    entropy_bound: float | None = None,
    remask: float = 0.0,
    remask_window: tuple[float, float] | None = None,
    corrector_steps: int = 0,
    corrector_size: float = 1.0,
    decoding=None,
    correctors: Sequence[Corrector] | None = None,
) -> torch.Tensor:
    """Draw sequences by simulating the reverse CTMC from t = 1 to t_min: Long[B, L].

    shape: (B, L). x_init: Long[B, L] starting tokens (default: a draw from the limit). fixed:
    Bool[B, L] positions clamped to x_init's clean tokens before every step and after the last
    (prompting, infilling); the other positions start from the limit. ``denoise`` ends with an
    analytic step from sigma_bar(t_min) to 0 that never lands on the mask, so an Absorbing run
    returns only real tokens. impl: "torch", "triton" (the fused kernels of ``ddlm.kernels.sampling``;
    Uniform analytic steps stay on torch), "auto" (Triton for CUDA tensors) or "reference" (the
    full-row float64 path: every position scored, exponential races; for comparisons); the others
    score and step only the rows that can change (``ddlm.sampling.steps``). cache: reuse the score
    of a sequence whose tokens did not change; only for score functions that declare
    ``time_independent = True`` (``ddlm.sampling.score_cache``), and None (default) turns it on
    exactly for those; same seed, same draws. stats: a dict to fill with ``network_calls``,
    ``sequences_scored`` (the cache passes only sequences that changed), ``positions_scored`` and
    ``cache`` (whether it was on); the progress bar shows the calls.

    The sampler is made of parts. Each group of keywords names one; or pass the part itself:

    - predictor: "analytic" (Tweedie), "euler", "tau_leaping" (``steps`` steps on the grid),
      "first_hitting" (absorbing; exact, one call per event; ``steps`` and ``impl`` unused) or
      "confidence" (absorbing; ``confidence``, ``unmask_schedule``, ``threshold`` and
      ``entropy_bound`` are its options; ``denoise`` must be True), or a ``Predictor`` of
      ``ddlm.sampling.predictors`` (``Analytic()``, ``Confidence(threshold=0.9)``, ...).
    - decoding (absorbing): temperature (>= 0; 0: greedy), top_k (>= 1 or None), top_p (in
      (0, 1]) reshape the law of the token a masked position unmasks to; when and where it unmasks
      is unchanged, and only the defaults are exact. Or ``decoding=`` one transform or a list of them
      (``Temperature``, ``TopK``, ``TopP`` of ``ddlm.sampling.decoding``, applied in order).
    - correctors (grid predictors; ``ddlm.sampling.correctors``): remask (eta in [0, 1], absorbing;
      ReMDM-style, no extra network call) in the steps starting within remask_window (t_hi, t_lo),
      and corrector_steps Euler steps of size corrector_size * dt of the p_t-invariant chain after
      each predictor step (any graph; one call each). Or ``correctors=[Remask(eta, window),
      PredictorCorrector(steps, size)]``.

    The defaults are the plain sampler; the keyword form and the parts draw the same tokens for the same seed.
    """
    shape = _check_args(graph, noise, shape, steps, predictor, x_init, fixed)
    check_sampling_options(denoise, generator, dtype)
    on_grid = isinstance(predictor, GridPredictor) or predictor in GRID_PREDICTORS
    correctors = correctors_from_options(graph, getattr(predictor, "name", predictor), on_grid, correctors, remask,
                                         remask_window, corrector_steps, corrector_size)
    decoding = decoding_from_options(graph, decoding, temperature, top_k, top_p)
    predictor = predictor_from_options(graph, predictor, denoise, confidence=confidence, unmask_schedule=unmask_schedule,
                                       threshold=threshold, entropy_bound=entropy_bound)
    scores = _score_evaluator(score_fn, graph, cache, stats, impl, t_min, decoding)
    device, impl = _device_and_impl(impl, device, x_init)
    loop = Loop(graph, scores, x_init, fixed, impl, dtype, generator, decoding)
    x = graph.sample_limit(*shape, generator=generator, device=device)
    if x_init is not None:
        x = torch.where(fixed, x_init, x) if fixed is not None else x_init.to(torch.long, copy=True)
    if isinstance(predictor, GridPredictor):
        x = run_grid(loop, predictor, correctors, x, Grid.make(noise, steps, t_min), denoise, progress)
    else:
        x = predictor.run(loop, noise, x, steps=steps, t_min=t_min, denoise=denoise, progress=progress)
    return loop.report(x, stats)
