"""Decoding strategies for absorbing models: reshaping p(x0 | x_t), and confidence-based parallel unmasking.

Under absorbing noise the ratios at a masked position are s_y = p(y | x_t) / (e^sigma_bar - 1)
for the real tokens y (``ddlm.first_hitting``), so normalising s over the real tokens gives the
model's p(x0_i = y | x_t), whatever sigma_bar. Two families of decoding strategies act on it.

Reshaping (``temperature``, ``top_k``, ``top_p``: the transforms ``Temperature``, ``TopK`` and ``TopP``,
composed by ``Decoding``). Where a sampler unmasks a position it draws the token from p(y | x_t);
a reshaped sampler draws it instead from

    q(y) ~ p(y | x_t)^(1 / temperature), restricted to the top_k most likely tokens, then to the
    smallest set of most likely tokens whose mass under q reaches top_p (nucleus),

in that order (temperature 0: the most likely token, greedy). The time or probability at which
a position unmasks is left alone: the euler / tau_leaping / analytic steps keep their move/stay
coin and draw only the destination from q; first_hitting keeps its event times and positions.
temperature 1, top_k None (or >= the number of real tokens) and top_p 1 change nothing, draw for
draw. Any other setting samples a different distribution from the model's on purpose (sharper:
fewer rare tokens, usually lower generative perplexity and lower entropy).

Confidence-based parallel decoding (``predictor="confidence"``; ``sample_confidence``). Every
step scores all masked free positions in one network call, draws a candidate token for each
from q, and unmasks some of them; the others stay masked and are predicted again next step.
Which ones: the most confident by the ``confidence`` measure of the model's p(. | x_t) at the
position (MaskGIT; LLaDA's low-confidence remasking, which predicts every masked position and
remasks the least confident, is the same rule), as many as the ``unmask_schedule`` says
(``steps`` steps; after step j of n masked positions ``n (1 - j / steps)`` (linear) or
``n cos(pi j / 2 steps)`` (cosine), rounded down, remain masked, so the last step leaves none;
"even": ``n // steps`` a step, one more in each of the first ``n % steps`` steps, as LLaDA);
or every position more confident than ``threshold`` (Fast-dLLM; at least one per step, so at
most n steps, ``steps`` unused); or, in decreasing confidence, positions while the sum of their
entropies stays <= ``entropy_bound`` (EB-Sampler; at least one per step).

LLaDA's own decoding (``llada_options``: the reference ``generate()`` of github.com/ML-GSAI/LLaDA) is
block decoding (``DiffusionPipeline.generate`` / ``sample_blocks`` with ``prompt``, ``block_size``,
``max_new_tokens``) with predictor "confidence", confidence "prob" (its "low_confidence" remasking) or
"random", unmask_schedule "even" and temperature 0. Both show the network the prompt, the finished
blocks, the current block and the blocks still to come as masks, and each step unmask, among the current
block's masked positions, the most confident ones to their argmax tokens. The tokens are LLaDA's,
``generate(model, prompt, steps=S, gen_length=G, block_length=K)``, for ``steps`` = S / (G / K) (ddlm
counts steps per block) with stop_at_eos False, when: (a) the network gives the ids ddlm never draws
(``MaskedDiffusionModel``'s banned ids: its mask token, special tokens, rows past the tokenizer) no
probability; LLaDA's argmax and softmax cover the whole vocabulary, so otherwise ddlm equals generate()
with those logits set to -inf first (as its ``logits_eos_inf`` does for EOS); (b) no two confidences of
a step tie or come within float32 rounding: ddlm ranks them in float64 from float32 logits and puts the
earlier position first, LLaDA in its logits' dtype in torch.topk's unspecified order (for a bf16 network
ddlm equals generate() after ``logits.float()``). With temperature > 0 or "random" the law is LLaDA's
but not the random stream (LLaDA: Gumbel-max in float64). ddlm also allows a shorter last block and
slides its window beyond the model's length. LLaDA's cfg_scale is ``guidance_scale = cfg_scale + 1`` on a
model without classes (``ddlm.guidance.prompt_guidance``: the prompt masked is the null condition); its
attention_mask (padded batches) and EOS options have no counterpart here.

These strategies are NOT exact samplers of the model's distribution. Positions unmasked in the
same step are drawn independently from their marginals p(x0_i | x_t), which ignores their
dependence (with every position in one step the result is the product of the marginals), and
choosing positions by confidence favours the model's confident (often repetitive) continuations
over its law. The exception: one position per step (a schedule of one per step, e.g.
steps = length, or ``threshold``/``entropy_bound`` that never admit a second) with the default
temperature / top_k / top_p is exact sequential sampling, p(x0) = prod_i p(x0_{o(i)} | the
earlier ones), for any order o that is chosen from the tokens revealed so far (or at random) but
not from the candidate draws: ``confidence="random"`` (uniform order, as in first_hitting) and
"max_prob", "margin", "entropy" (greedy orders) are exact then; "prob" is not (a position is
picked because its drawn token happened to be likely, which biases that token). Tests measure
all of this against exact oracles (tests/test_decoding.py).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..core.checks import is_int, is_number
from ..core.choices import CONFIDENCES, UNMASK_SCHEDULES
from ..core.draws import inverse_cdf
from ..core.processes import Graph
from .score_cache import ScoreEvaluator

THRESHOLD_CONFIDENCES = ("max_prob", "margin", "prob")  # confidences that are probabilities in [0, 1]


def _weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Unnormalised weights exp(log_weights - row max) [M, S]; a row of -inf stays all zero."""
    top = log_weights.amax(-1, keepdim=True)
    return torch.exp(log_weights - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))


class Temperature:
    """log-weights [M, S] -> (log_weights - row max) / value; value 0 keeps only the largest (the first on ties): greedy."""

    def __init__(self, value: float):
        if not is_number(value) or value < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy, the most likely token; 1: the model's "
                             f"distribution), got {value!r}")
        self.value = value

    def __call__(self, log_weights: torch.Tensor) -> torch.Tensor:
        top = log_weights.amax(-1, keepdim=True)
        alive = torch.isfinite(top)  # a row without a finite entry stays all -inf
        if self.value == 0:
            best = torch.where(alive, 0.0, -math.inf).to(log_weights.dtype)
            return torch.full_like(log_weights, -math.inf).scatter_(-1, log_weights.argmax(-1, keepdim=True), best)
        return (log_weights - torch.where(alive, top, torch.zeros_like(top))) / self.value

    def __repr__(self) -> str:
        return f"Temperature({self.value!r})"


class TopK:
    """log-weights [M, S] -> -inf outside the k largest of each row."""

    def __init__(self, k: int):
        if not is_int(k, 1):
            raise ValueError(f"top_k must be an int >= 1 or None (no top-k filter), got {k!r}")
        self.k = k

    def __call__(self, log_weights: torch.Tensor) -> torch.Tensor:
        if self.k >= log_weights.shape[-1]:
            return log_weights
        keep = torch.zeros_like(log_weights, dtype=torch.bool).scatter_(-1, _weights(log_weights).topk(self.k, -1).indices, True)
        return log_weights.masked_fill(~keep, -math.inf)

    def __repr__(self) -> str:
        return f"TopK({self.k!r})"


class TopP:
    """log-weights [M, S] -> -inf outside the smallest set of largest weights holding p of the row's mass (nucleus)."""

    def __init__(self, p: float):
        if not is_number(p) or not 0 < p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1] (1: no nucleus filter), got {p!r}")
        self.p = p

    def __call__(self, log_weights: torch.Tensor) -> torch.Tensor:
        ordered, order = torch.sort(_weights(log_weights), stable=True, dim=-1, descending=True)
        before = torch.cumsum(ordered, -1) - ordered  # mass of the strictly larger ones
        keep_sorted = before < self.p * ordered.sum(-1, keepdim=True)
        return log_weights.masked_fill(~torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted), -math.inf)

    def __repr__(self) -> str:
        return f"TopP({self.p!r})"


class Decoding:
    """Decoding transforms composed: each maps log-weights [M, S] to log-weights (-inf: excluded), in order;
    the result is the unnormalised weights [M, S] of the draw (a row of -inf stays all zero)."""

    def __init__(self, *transforms):
        if not all(callable(t) for t in transforms):
            raise ValueError(f"decoding transforms must be callables from log-weights [M, S] to log-weights, got {transforms!r:.80}")
        self.transforms = transforms

    def __call__(self, log_weights: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            log_weights = transform(log_weights)
        return _weights(log_weights)

    def __repr__(self) -> str:
        return f"Decoding({', '.join(map(repr, self.transforms))})"


def shape_log_weights(log_weights: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float = 1.0) -> torch.Tensor:
    """Reshaped unnormalised weights [M, S] from log-weights [M, S] (-inf: excluded), in log_weights' dtype.

    w ~ exp(log_weights / temperature), then zero outside the top_k largest, then outside the
    smallest set of largest weights holding top_p of the mass (the largest always stays).
    temperature 0: one-hot at the largest (the first on ties). Every row keeps positive mass if
    it has a finite entry; a row of -inf stays all zero.
    """
    return Decoding(*_transforms(temperature, top_k, top_p))(log_weights)


def _transforms(temperature, top_k, top_p) -> list:
    """Temperature / TopK / TopP for the values that change the draw (each checks its own)."""
    parts = [Temperature(temperature), TopK(top_k) if top_k is not None else None, TopP(top_p)]
    return [t for t, on in zip(parts, (temperature != 1, top_k is not None, top_p < 1)) if on]


def decoding_from_options(graph: Graph, decoding, temperature=1.0, top_k=None, top_p=1.0) -> Decoding | None:
    """The decoding of ``sample(temperature=..., top_k=..., top_p=...)`` or ``sample(decoding=...)``, or None (the plain draw).

    decoding: None, a ``Decoding``, or one transform or a list of them (``Temperature``, ``TopK``, ``TopP`` or any
    callable from log-weights [M, S] to log-weights). Absorbing only, unless it changes nothing.
    """
    transforms = _transforms(temperature, top_k, top_p)
    if decoding is not None and transforms:
        raise ValueError("pass decoding= or the keywords temperature / top_k / top_p, not both")
    if decoding is None:
        active = temperature != 1 or (top_k is not None and top_k < graph.num_tokens) or top_p < 1
        decoding = Decoding(*transforms) if active else None
    elif not isinstance(decoding, Decoding):
        decoding = Decoding(*(decoding if isinstance(decoding, (list, tuple)) else [decoding]))
    if decoding is not None and graph.mask_id is None:
        raise ValueError(f"temperature, top_k and top_p reshape p(x0 | x_t) at masked positions and need an absorbing "
                         f"process, got {graph!r}; allowed for it: temperature=1, top_k=None, top_p=1")
    return decoding


def check_confidence_values(confidence, unmask_schedule, threshold, entropy_bound) -> None:
    """ValueError naming the argument and the allowed values for the confidence-decoding options."""
    if confidence is not None and confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    if unmask_schedule is not None and unmask_schedule not in UNMASK_SCHEDULES:
        raise ValueError(f"unmask_schedule must be one of {UNMASK_SCHEDULES}, got {unmask_schedule!r}")
    if threshold is not None and entropy_bound is not None:
        raise ValueError("pass threshold= or entropy_bound= (two different stopping rules per step), not both")
    if unmask_schedule is not None and (threshold is not None or entropy_bound is not None):
        raise ValueError("unmask_schedule sets how many positions a step unmasks; threshold= and entropy_bound= decide that "
                         "themselves: pass one of them")
    if threshold is not None:
        if not is_number(threshold) or not 0 <= threshold < 1:
            raise ValueError(f"threshold must be a number in [0, 1) (a step unmasks every position whose confidence exceeds it, "
                             f"at least one), got {threshold!r}")
        if (confidence or "max_prob") not in THRESHOLD_CONFIDENCES:
            raise ValueError(f"threshold compares a probability: confidence must be one of {THRESHOLD_CONFIDENCES} with it, "
                             f"got {confidence!r}")
    if entropy_bound is not None and (not is_number(entropy_bound) or entropy_bound < 0):
        raise ValueError(f"entropy_bound must be a finite number >= 0 (nats; a step unmasks positions while the sum of their "
                         f"entropies stays within it, at least one), got {entropy_bound!r}")


REMASKINGS = {"low_confidence": "prob", "random": "random"}  # LLaDA's remasking -> ddlm's confidence


def llada_options(remasking: str = "low_confidence", temperature: float = 0.0) -> dict:
    """The sampler options of LLaDA's ``generate()`` for block decoding (module docstring), a dict to pass with ``**``.

    ``pipe.generate(prompt=..., max_new_tokens=G, block_size=K, steps=S * K // G, **llada_options())`` gives the
    tokens of LLaDA's ``generate(model, prompt, steps=S, gen_length=G, block_length=K)``. remasking:
    "low_confidence" (confidence "prob", the probability of the token drawn) or "random".
    """
    if remasking not in REMASKINGS:
        raise ValueError(f"remasking must be one of {tuple(REMASKINGS)} (LLaDA's names), got {remasking!r}")
    return dict(predictor="confidence", confidence=REMASKINGS[remasking], unmask_schedule="even", temperature=temperature)


def _remaining(n0: torch.Tensor, j: int, steps: int, schedule: str) -> torch.Tensor:
    """How many of n0 masked positions remain masked after step j of steps, Long[B] (0 after the last)."""
    if j >= steps:
        return torch.zeros_like(n0)
    if schedule == "even":  # n0 // steps a step, one more in each of the first n0 % steps steps (LLaDA)
        return n0 - j * (n0 // steps) - (n0 % steps).clamp(max=j)
    if schedule == "linear":
        return n0 * (steps - j) // steps  # exact integer arithmetic
    return torch.floor(n0.double() * math.cos(math.pi / 2 * j / steps) + 1e-9).long().clamp(max=n0)


def _confidence(kind: str, logp: torch.Tensor, candidate: torch.Tensor, generator, dtype) -> torch.Tensor:
    """Confidence [M] (higher: unmask first) from the model's log p [M, N] and the candidates Long[M]."""
    p = torch.exp(logp)
    if kind == "max_prob":
        return p.amax(-1)
    if kind == "prob":
        return p.gather(-1, candidate[:, None]).squeeze(1)
    if kind == "margin":
        if p.shape[-1] < 2:
            return p[:, 0]
        top2 = p.topk(2, -1).values
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        return -_entropy(p, logp)
    return torch.rand(p.shape[:-1], dtype=dtype, device=p.device, generator=generator)  # random


def _entropy(p: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def _adaptive_count(conf: torch.Tensor, rows: torch.Tensor, order: torch.Tensor, logp: torch.Tensor,
                    threshold: float | None, entropy_bound: float | None) -> torch.Tensor:
    """Long[B]: how many of each row's most confident free positions to unmask this step, at least one where
    a row has any: those above ``threshold``, or the leading run (in ``order``) whose entropies sum to at most
    ``entropy_bound``. conf [B, L] (-inf off ``rows``), rows Bool[B, L], order [B, L], logp [R, S]."""
    if threshold is not None:
        count = ((conf > threshold) & rows).sum(1)
    else:
        entropy = torch.zeros(conf.shape, dtype=conf.dtype, device=conf.device)
        entropy[rows] = _entropy(torch.exp(logp), logp)
        within = (torch.cumsum(entropy.gather(1, order), 1) <= entropy_bound * (1 + 1e-12)) & rows.gather(1, order)
        count = within.int().cumprod(1).sum(1)  # the leading run of positions within the bound
    return torch.where(rows.any(1), count.clamp_min(1), torch.zeros_like(count))


def sample_confidence(
    evaluator: ScoreEvaluator, graph: Graph, noise, x: torch.Tensor, fixed: torch.Tensor | None, *,
    steps: int, confidence: str | None = None, unmask_schedule: str | None = None, threshold: float | None = None,
    entropy_bound: float | None = None, shape=None, t_min: float = 1e-5, dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None, progress: bool = True,
) -> torch.Tensor:
    """Unmask every masked free position of x Long[B, L] by confidence (module docstring): Long[B, L].

    Not an exact sampler of the model (module docstring). confidence (default "max_prob"):
    "max_prob" max_y p(y | x_t); "margin" the top probability minus the second; "entropy" minus
    the entropy of p; "prob" p of the drawn candidate (LLaDA low-confidence remasking, MaskGIT);
    "random" uniform (exact with one position per step, as are the three before it). shape: a ``Decoding``
    (temperature / top_k / top_p) for the candidate draw, or None (draw from p). The score
    function is called at the sigma_bar whose mask probability 1 - e^-sigma_bar is the
    sequence's masked fraction (clamped to [sigma_bar(t_min), sigma_bar(1)]); for exact ratios
    p(. | x_t) does not depend on it.
    """
    mask = graph.mask_id
    x = x.clone()
    batch, length = x.shape
    device = x.device
    free = x == mask
    if fixed is not None:
        free &= ~fixed
    n0 = free.sum(1)
    adaptive = threshold is not None or entropy_bound is not None
    schedule = unmask_schedule or "linear"
    kind = confidence or "max_prob"
    start = float(noise.total(torch.ones((), dtype=torch.float64)))
    floor = float(noise.total(torch.tensor(t_min, dtype=torch.float64)))
    positions = torch.arange(length, device=device)
    bar = tqdm(total=int(n0.max()) if adaptive and batch else steps, desc="sampling (confidence)", disable=not progress,
               leave=None)  # kept alone, cleared when nested under another bar
    j = 0
    while bool(free.any()):
        if adaptive:
            rows = free
        else:
            j += 1
            count = _remaining(n0, j - 1, steps, schedule) - _remaining(n0, j, steps, schedule)
            bar.update(1)
            if not bool((count > 0).any()):
                continue  # nothing to unmask this step: no network call
            rows = free & (count > 0)[:, None]
        masked_fraction = (x == mask).sum(1).double() / length
        sigma = (-torch.log1p(-masked_fraction.clamp(max=1.0 - 1e-12))).clamp(floor, start)
        log_score = evaluator(x, sigma, rows)  # [R, S], rows in row-major order of x[rows]
        log_weights = log_score[:, :mask].to(dtype)
        logp = torch.log_softmax(log_weights, -1)
        if not bool(torch.isfinite(logp).any(-1).all()):
            raise ValueError("the score function gave a masked position no finite positive weight on any real token")
        candidate = inverse_cdf(shape(log_weights) if shape is not None else torch.exp(logp), generator, dtype)
        conf = torch.full((batch, length), -math.inf, dtype=dtype, device=device)
        conf[rows] = _confidence(kind, logp, candidate, generator, dtype).to(dtype)
        order = torch.sort(conf, stable=True, dim=1, descending=True).indices  # free positions first, most confident first
        rank = torch.empty_like(order).scatter_(1, order, positions.expand(batch, length))
        if adaptive:
            count = _adaptive_count(conf, rows, order, logp, threshold, entropy_bound)
            bar.update(1)
        chosen = rows & (rank < count[:, None])
        tokens = torch.full_like(x, mask)
        tokens[rows] = candidate
        x = torch.where(chosen, tokens, x)
        free &= ~chosen
        bar.set_postfix(calls=evaluator.calls, refresh=False)
    bar.close()
    return x
