"""Guided sampling: classifier-free guidance and classifier guidance on the reverse rates.

Both are score-function combinators: they return a ``score_fn(x_t, sigma_bar) -> log s`` (``ddlm.score``)
that any sampler of ``ddlm.sampling.sample`` runs unchanged.

Classifier-free guidance (``classifier_free_guidance``, ``guided_model_score``). From the log-ratios of
a class-conditional model, log s_c, and of the unconditional one, log s_u (the same network with the
null class),

    log s_gamma = gamma log s_c + (1 - gamma) log s_u,   R_gamma(x -> y) = R_c(x -> y)^gamma R_u(x -> y)^(1 - gamma),

both rates sharing sigma(t) Q[y, x]. gamma = 1 is the conditional model and gamma = 0 the
unconditional one: with exact ratios they sample p(x | c) and p(x) exactly. Any other gamma (> 1
is the usual "guidance scale") is NOT an exact sampler of any distribution: the guided rates are
not the reverse rates of a forward-noised law, in general not those of the "sharpened" law
p(x | c)^gamma p(x)^(1 - gamma) either (docs/how-to/guidance.md measures the gap). log s at the
current token is 0 in both and stays 0; a ratio that is 0 (log s = -inf) under either stays 0.

Guidance on a prompt (``prompt_guidance``; LLaDA's "unsupervised CFG"). A model without classes has a
null condition too: the prompt masked. With absorbing noise a masked position carries no information,
so the same network on x_t with every prompt position replaced by the mask gives the ratios of the
model's law with the prompt marginalised out, log s_u, and on x_t itself those given the prompt, log
s_c; they combine by the same rule. gamma = 1 samples p(x | prompt) and gamma = 0 the model's own
law of the other positions (both exact with exact ratios); LLaDA's
``logits = un + (cfg_scale + 1) (cond - un)`` is gamma = cfg_scale + 1 for every step that normalises s
over the real tokens (the log-normalisers and log(e^sigma_bar - 1) are constant per row and
gamma + (1 - gamma) = 1).

Classifier guidance (``classifier_guidance``). With a classifier of noisy sequences giving
log p_t(c | x_t), Bayes' rule gives the conditional ratios from the unconditional ones,

    s_y(x | c) = p_t(y | c) / p_t(x | c) = s_y(x) p_t(c | y) / p_t(c | x),

y the sequence x with one position changed. The classifier is evaluated on every one-position
neighbour of each scored row (S sequences per row: rows x S classifier evaluations per step), so
the guided scores are exact when s and the classifier are, and every predictor then samples
p(x | c) exactly. ``scale`` gamma is an exponent on the classifier ratio, log s_y + gamma (log p_t(c | y)
- log p_t(c | x)); gamma != 1 is not exact.

For large vocabularies ``gradient_classifier_guidance`` replaces the S neighbour evaluations by one
gradient: log p_t(c | y) - log p_t(c | x) ~ <grad of log p_t(c | .) at onehot(x), e_y - e_x> (a
first-order Taylor expansion in the one-hot input of a classifier that accepts one). It is an
APPROXIMATION, not exact even with an exact classifier; tests/test_guidance.py measures it.

What guidance means per predictor for gamma other than 0 and 1 (none is refused; with exact
ratios, gamma in {0, 1}, and exact classifier guidance at gamma = 1, every predictor is exact):

- euler, tau_leaping and corrector steps integrate the guided rates by their own rule.
- analytic: the Tweedie step with s_gamma in place of the exact ratios. Absorbing: a masked position
  unmasks with probability expm1(dsigma) sum_y s_gamma,y and to y ~ s_gamma,y; since sum_y s_gamma,y
  differs from the exact 1 / (e^sigma_bar - 1) (smaller for gamma in (0, 1) by Hoelder's inequality,
  larger for gamma > 1, by the factor exp((gamma - 1) D_gamma(p_c || p_u)) of a Renyi divergence),
  guidance changes how fast positions unmask as well as into what. Uniform: the staggered score
  exp(-dsigma Q)^T s_gamma, clipped at 0.
- first_hitting, confidence and the final denoising step read s only normalised over the real
  tokens of masked positions: the token is drawn from p_gamma(y | x_t) ~ p_c(y | x_t)^gamma
  p_u(y | x_t)^(1 - gamma) (CFG as masked diffusion LMs apply it to logits), while when and where
  positions unmask follows the exact law, which for an absorbing process does not depend on the
  data and is the same under every class.

Protocols of ``ddlm.score`` and ``ddlm.score_cache``: every guided score function accepts
``positions`` (the rows are asked of a part that accepts them, else gathered from its full output;
classifier guidance classifies only the requested rows' neighbours). ``prompt_guidance`` declares
``time_independent`` when its score function does and the prompt is one Bool[L] for every sequence.
``classifier_free_guidance``
declares ``time_independent`` when both parts do (gamma + (1 - gamma) = 1 keeps the form
f - log(e^sigma_bar - 1)); ``guided_model_score`` does when the model does and one label is given
for every sequence (the cache scores subsets of the batch, which per-sequence labels could not
follow); classifier guidance never does (a classifier reads sigma_bar), so the sampler's cache
stays off for it.
"""

from __future__ import annotations

import torch

from ..core.checks import is_int, is_number
from ..core.score import NonFiniteScoreError, ScoreFn, accepts_positions, row_index
from .score_cache import is_time_independent

Labels = int | torch.Tensor


def check_scale(scale, name: str = "scale") -> float:
    """The guidance scale as a float; ValueError unless a finite number >= 0."""
    if not is_number(scale) or scale < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (1: the conditional model, 0: the unconditional one, "
                         f"> 1: stronger guidance), got {scale!r}")
    return float(scale)


def combine_log_scores(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """gamma log s_c + (1 - gamma) log s_u, elementwise (at least float32); -inf in either stays -inf (gamma not 0 or 1)."""
    if scale == 1:
        return conditional
    if scale == 0:
        return unconditional
    if conditional.shape != unconditional.shape:
        raise ValueError(f"conditional and unconditional log-scores differ in shape: {list(conditional.shape)} "
                         f"against {list(unconditional.shape)}")
    dtype = torch.promote_types(torch.promote_types(conditional.dtype, unconditional.dtype), torch.float32)
    cond, uncond = conditional.to(dtype), unconditional.to(dtype)
    out = scale * cond + (1 - scale) * uncond
    return out.masked_fill_(torch.isneginf(cond) | torch.isneginf(uncond), -torch.inf)


def _check_part(log_score, what: str) -> torch.Tensor:
    """A part's log-scores must be a floating tensor without NaN or +inf (the combination could hide them)."""
    if not isinstance(log_score, torch.Tensor) or not log_score.is_floating_point():
        raise TypeError(f"the {what} score function must return floating log-scores, got {type(log_score).__name__}")
    if log_score.numel():
        largest = log_score.detach().amax()
        if bool(torch.isnan(largest)) or bool(torch.isposinf(largest)):
            raise NonFiniteScoreError(f"the {what} score function returned NaN or +inf log-scores")
    return log_score


def _rows(log_score: torch.Tensor, x_t: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The rows ``positions`` of a full output [B, L, S] (all of it for None)."""
    return log_score if positions is None else log_score.flatten(0, 1)[row_index(positions, x_t.shape)]


def _base_rows(score_fn: ScoreFn, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions, what: str = "unconditional") -> torch.Tensor:
    """A part's log-scores: [B, L, S], or the rows ``positions`` [R, S] (asked of score_fn when it accepts them), checked."""
    if positions is not None and accepts_positions(score_fn):
        return _check_part(score_fn(x_t, sigma_bar, positions=positions), what)
    return _rows(_check_part(score_fn(x_t, sigma_bar), what), x_t, positions)


class ClassifierFreeGuidance:
    """log s = scale log s_c + (1 - scale) log s_u from two score functions (module docstring).

    conditional, unconditional: score functions [B, L, S] (``ddlm.score``); scale: gamma >= 0.
    """

    def __init__(self, conditional: ScoreFn, unconditional: ScoreFn, scale: float):
        for name, fn in (("conditional", conditional), ("unconditional", unconditional)):
            if not callable(fn):
                raise TypeError(f"{name} must be a score function (x_t [B, L], sigma_bar [B]) -> [B, L, S], got {type(fn).__name__}")
        self.conditional, self.unconditional = conditional, unconditional
        self.scale = check_scale(scale)
        self.accepts_positions = True  # rows are asked of a part that accepts positions, else gathered from its output
        self.time_independent = is_time_independent(conditional) and is_time_independent(unconditional)

    def __call__(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if self.scale == 1:
            return _base_rows(self.conditional, x_t, sigma_bar, positions, "conditional")
        unconditional = _base_rows(self.unconditional, x_t, sigma_bar, positions)
        if self.scale == 0:
            return unconditional
        conditional = _base_rows(self.conditional, x_t, sigma_bar, positions, "conditional")
        return combine_log_scores(conditional, unconditional, self.scale)


def classifier_free_guidance(conditional: ScoreFn, unconditional: ScoreFn, scale: float) -> ClassifierFreeGuidance:
    """The guided score function log s = scale log s_c + (1 - scale) log s_u (exact at scale 0 and 1 only)."""
    return ClassifierFreeGuidance(conditional, unconditional, scale)


def _clean_rows(log_score: torch.Tensor, x_t: torch.Tensor, prompt: torch.Tensor, positions) -> torch.Tensor:
    """log_score ([B, L, S] or the rows ``positions`` [R, S]) with each row at a prompt position that of a clean
    token: -inf (no rate) but 0 at its current token."""
    at_prompt = _rows(prompt, x_t, positions)
    if not bool(at_prompt.any()):
        return log_score
    tokens = _rows(x_t, x_t, positions)[at_prompt]
    out = log_score.masked_fill(at_prompt[..., None], -torch.inf)
    out[at_prompt] = out[at_prompt].scatter(-1, tokens[:, None], 0.0)
    return out


class PromptGuidance:
    """Classifier-free guidance on a prompt: log s = scale log s(x_t) + (1 - scale) log s(x_t, prompt masked).

    score_fn: the model's score function [B, L, S] under an absorbing process (``ddlm.score``); prompt:
    the condition's positions, Bool[L] (every sequence) or Bool[B, L]; mask_id: the mask state; scale:
    gamma >= 0. The unconditional part is score_fn on x_t with the prompt's positions set to the mask, its
    rows there those of clean tokens (the sampler clamps them). gamma not 0 or 1: both parts in one call
    of the doubled batch; a prompt with no position in x_t leaves score_fn as it is.
    """

    accepts_positions = True

    def __init__(self, score_fn: ScoreFn, prompt: torch.Tensor, mask_id: int, scale: float):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be a score function (x_t [B, L], sigma_bar [B]) -> [B, L, S], got {type(score_fn).__name__}")
        if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.bool or prompt.dim() not in (1, 2):
            raise ValueError(f"prompt must be a Bool[L] or Bool[B, L] tensor of the prompt's positions, got {prompt!r:.80}")
        if not is_int(mask_id, 1):
            raise ValueError(f"mask_id must be the absorbing process's mask state (an int >= 1), got {mask_id!r}")
        self.score_fn, self.prompt, self.mask_id = score_fn, prompt, mask_id
        self.scale = check_scale(scale)
        self.time_independent = is_time_independent(score_fn) and prompt.dim() == 1

    def _prompt(self, x_t: torch.Tensor) -> torch.Tensor:
        """The prompt's positions Bool[B, L] for x_t Long[B, L]."""
        prompt = self.prompt.to(x_t.device)
        if prompt.shape[-1] != x_t.shape[1] or (prompt.dim() == 2 and prompt.shape[0] != x_t.shape[0]):
            raise ValueError(f"prompt of shape {list(prompt.shape)} does not fit x_t of shape {list(x_t.shape)}")
        return prompt.expand(x_t.shape)

    def unconditional(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """log s_u: score_fn on x_t with the prompt masked, [B, L, S] or the rows ``positions`` [R, S]."""
        prompt = self._prompt(x_t)
        log_score = _base_rows(self.score_fn, x_t.masked_fill(prompt, self.mask_id), sigma_bar, positions)
        return _clean_rows(log_score, x_t, prompt, positions)

    def __call__(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        prompt = self._prompt(x_t)
        if self.scale == 1 or not bool(prompt.any()):
            return _base_rows(self.score_fn, x_t, sigma_bar, positions, "conditional")
        if self.scale == 0:
            return self.unconditional(x_t, sigma_bar, positions)
        sigma_bar = torch.as_tensor(sigma_bar, device=x_t.device).expand(x_t.shape[0])
        index = None if positions is None else row_index(positions, x_t.shape)
        doubled = _base_rows(self.score_fn, torch.cat([x_t, x_t.masked_fill(prompt, self.mask_id)]),
                             torch.cat([sigma_bar, sigma_bar]), None if index is None else torch.cat([index, index + x_t.numel()]),
                             "prompt-guided")
        conditional, unconditional = doubled.chunk(2)
        return combine_log_scores(conditional, _clean_rows(unconditional, x_t, prompt, index), self.scale)


def prompt_guidance(score_fn: ScoreFn, prompt: torch.Tensor, mask_id: int, scale: float) -> PromptGuidance:
    """Classifier-free guidance on a prompt (``PromptGuidance``; LLaDA's cfg_scale is scale - 1): the unconditional part
    is ``score_fn`` with the prompt's positions Bool[L] or Bool[B, L] masked; exact at scale 0 and 1 only."""
    return PromptGuidance(score_fn, prompt, mask_id, scale)


def _num_classes(model, count: int | None = None) -> int:
    if count is None:
        config = getattr(model, "config", None)
        count = getattr(config, "num_classes", None) if config is not None else getattr(model, "num_classes", None)
    if not is_int(count, 1):
        raise ValueError("label= needs a class-conditional model (config.num_classes > 0); this model is unconditional "
                         f"(num_classes={count!r}): sample it without a label")
    return count


def _check_labels(label: Labels, num_classes: int | None) -> Labels:
    """An int class id or a Long[B] tensor of them, each in [0, num_classes) (None: any id >= 0)."""
    limit = torch.iinfo(torch.long).max if num_classes is None else num_classes
    allowed = "id >= 0" if num_classes is None else f"id in [0, {num_classes}) (the model's num_classes = {num_classes})"
    if is_int(label, 0) and label < limit:
        return label
    if isinstance(label, torch.Tensor) and label.dim() <= 1 and not (label.is_floating_point() or label.is_complex()
                                                                     or label.dtype == torch.bool):
        bad = (label < 0) | (label >= limit)
        if bool(bad.any()):
            raise ValueError(f"label must be a class {allowed}, got {label[bad][0].item() if label.dim() else label.item()}")
        return int(label) if label.dim() == 0 else label.long()
    raise ValueError(f"label must be a class {allowed} or a Long[B] tensor of them, got {label!r:.80}")


def _per_sequence(label: Labels, batch: int, device) -> torch.Tensor:
    if isinstance(label, int):
        return torch.full((batch,), label, dtype=torch.long, device=device)
    if label.shape[0] != batch:
        raise ValueError(f"label holds {label.shape[0]} class ids but the score function was called on {batch} sequences; "
                         "per-sequence labels need the whole batch in every call (pass one int label to use the cache "
                         "or batch_size)")
    return label.to(device)


class GuidedModelScore:
    """Classifier-free guidance from one class-conditional model, both terms in one call of the doubled batch.

    model: a class-conditional ``DDLMForDiffusion`` (``config.num_classes = K > 0``) or any callable
    ``model(x_t, sigma_bar, class_labels=Long[B])`` -> [B, L, S] with a ``num_classes`` attribute
    (``config.num_classes`` first; or given as ``num_classes``), the null class id being K; positions= is
    passed when the model accepts it. label: an int class id in [0, K) or Long[B], one per sequence. scale: gamma >= 0.
    gamma = 1 and 0 make one call of the plain batch (the label's or the null class's scores).
    """

    def __init__(self, model, label: Labels, scale: float = 1.0, num_classes: int | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable model(x_t, sigma_bar, class_labels=...), got {type(model).__name__}")
        self.model = model
        self.num_classes = _num_classes(model, num_classes)
        self.label = _check_labels(label, self.num_classes)
        self.scale = check_scale(scale)
        self.accepts_positions = True
        self.time_independent = is_time_independent(model) and isinstance(self.label, int)

    def _scores(self, x_t, sigma_bar, labels, positions):
        if positions is None:
            return _check_part(self.model(x_t, sigma_bar, class_labels=labels), "model's")
        index = row_index(positions, x_t.shape)
        if accepts_positions(self.model):
            return _check_part(self.model(x_t, sigma_bar, positions=index, class_labels=labels), "model's")
        return _check_part(self.model(x_t, sigma_bar, class_labels=labels), "model's").flatten(0, 1)[index]

    def __call__(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        batch, length = x_t.shape
        labels = _per_sequence(self.label, batch, x_t.device)
        if self.scale == 1:
            return self._scores(x_t, sigma_bar, labels, positions)
        null = torch.full_like(labels, self.num_classes)
        if self.scale == 0:
            return self._scores(x_t, sigma_bar, null, positions)
        sigma_bar = torch.as_tensor(sigma_bar, device=x_t.device).expand(batch)
        index = None if positions is None else row_index(positions, x_t.shape)
        doubled = self._scores(torch.cat([x_t, x_t]), torch.cat([sigma_bar, sigma_bar]), torch.cat([labels, null]),
                               None if index is None else torch.cat([index, index + batch * length]))
        conditional, unconditional = doubled.chunk(2)
        return combine_log_scores(conditional, unconditional, self.scale)


def guided_model_score(model, label: Labels, scale: float = 1.0, num_classes: int | None = None) -> GuidedModelScore:
    """Classifier-free guidance of a class-conditional model towards ``label`` (``GuidedModelScore``): one network call
    of the doubled batch (label and null class) per step; exact at scale 0 and 1 only."""
    return GuidedModelScore(model, label, scale, num_classes)


def _check_logits(logits, labels: torch.Tensor):
    """A classifier's output must be floating logits [M, C] for the M = len(labels) sequences, C > every label."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != labels.shape[0] \
            or not logits.is_floating_point():
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"classifier must return floating logits [{labels.shape[0]}, C], got {got}")
    if labels.shape[0] and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(labels.max())} is out of range for a classifier of {logits.shape[1]} classes")
    return logits


class ClassifierGuidance:
    """log s_y + scale (log p_t(c | y) - log p_t(c | x)) with the classifier evaluated on every one-position neighbour y.

    score_fn: the unconditional score function (``ddlm.score``). classifier(x_t Long[M, L], sigma_bar [M])
    -> [M, C] logits or log-probabilities over C classes (log-softmax is applied here). label: an int in
    [0, C) or Long[B]. scale: gamma >= 0 (1: exact with an exact classifier). batch_size: at most this many
    sequences per classifier call (None: all of a step's rows x S neighbours at once).
    """

    accepts_positions = True
    time_independent = False

    def __init__(self, score_fn: ScoreFn, classifier, label: Labels, scale: float = 1.0, batch_size: int | None = None):
        for name, fn in (("score_fn", score_fn), ("classifier", classifier)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if batch_size is not None and not is_int(batch_size, 1):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        self.score_fn, self.classifier = score_fn, classifier
        self.label = _check_labels(label, None)
        self.scale = check_scale(scale)
        self.batch_size = batch_size

    def _log_probs(self, seqs: torch.Tensor, sigma_bar: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_t(label | seq) [M] float64 from one classifier call."""
        logits = _check_logits(self.classifier(seqs, sigma_bar), labels)
        if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
            raise NonFiniteScoreError("the classifier returned NaN or +inf logits")
        return torch.log_softmax(logits.double(), -1).gather(1, labels[:, None]).squeeze(1)

    def log_ratios(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, index: torch.Tensor, num_states: int) -> torch.Tensor:
        """log p_t(c | x^{i<-y}) - log p_t(c | x) for the flat rows ``index`` (b * L + i) of x_t: [R, S] float64."""
        batch, length = x_t.shape
        labels = _per_sequence(self.label, batch, x_t.device)
        sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float64, device=x_t.device).expand(batch)
        seq, pos = index // length, index % length
        states = torch.arange(num_states, device=x_t.device)
        rows_per_call = index.numel() if self.batch_size is None else max(1, self.batch_size // num_states)
        parts = []
        for start in range(0, index.numel(), max(rows_per_call, 1)):
            b, i = seq[start:start + rows_per_call], pos[start:start + rows_per_call]
            neighbours = x_t[b].repeat_interleave(num_states, 0)  # [r * S, L]
            neighbours[torch.arange(neighbours.shape[0], device=x_t.device), i.repeat_interleave(num_states)] = states.repeat(len(b))
            parts.append(self._log_probs(neighbours, sigma_bar[b].repeat_interleave(num_states),
                                         labels[b].repeat_interleave(num_states)).view(len(b), num_states))
        log_p = torch.cat(parts) if parts else torch.zeros(0, num_states, dtype=torch.float64, device=x_t.device)
        current = log_p.gather(1, x_t.reshape(-1)[index][:, None])  # y = x_i: the sequence itself
        if bool(torch.isneginf(current).any()):
            raise ValueError("the classifier gives p_t(c | x_t) = 0 to a current sequence: it is impossible under the label, "
                             "so guidance towards it is undefined")
        return log_p - current

    def __call__(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        sigma_bar = torch.as_tensor(sigma_bar, device=x_t.device).expand(x_t.shape[0])
        log_score = _base_rows(self.score_fn, x_t, sigma_bar, positions)
        if self.scale == 0:
            return log_score
        num_states = log_score.shape[-1]
        index = torch.arange(x_t.numel(), device=x_t.device) if positions is None else row_index(positions, x_t.shape)
        ratio = self.log_ratios(x_t, sigma_bar, index, num_states)
        out = log_score.reshape(-1, num_states).double() + self.scale * ratio
        return out.view(*x_t.shape, num_states) if positions is None else out


def classifier_guidance(score_fn: ScoreFn, classifier, label: Labels, scale: float = 1.0,
                        batch_size: int | None = None) -> ClassifierGuidance:
    """Guided score function from an unconditional one and a noisy-sequence classifier (``ClassifierGuidance``);
    exact at scale 1 with an exact classifier."""
    return ClassifierGuidance(score_fn, classifier, label, scale, batch_size)


class GradientClassifierGuidance:
    """APPROXIMATE classifier guidance for large vocabularies: the classifier ratio to first order in the one-hot input.

    log p_t(c | y) - log p_t(c | x) ~ <grad_v log p_t(c | v) at v = onehot(x), e_y - e_x> at the changed
    position, i.e. g[b, i, y] - g[b, i, x_i]: one forward and one backward of the classifier per call,
    whatever S (``ClassifierGuidance`` needs rows x S forwards). Not exact even with an exact classifier
    (log p_t(c | .) is not affine in the one-hot); tests measure the error. classifier(onehot Float[B, L, S],
    sigma_bar [B]) -> logits or log-probabilities [B, C], differentiable in onehot (e.g. ``onehot @
    embedding.weight`` in place of an embedding lookup). Gradients are taken with ``torch.enable_grad``
    inside, so it runs under the samplers' ``torch.no_grad`` (not under ``torch.inference_mode``).
    score_fn, label, scale as in ``ClassifierGuidance``.
    """

    accepts_positions = True
    time_independent = False

    def __init__(self, score_fn: ScoreFn, classifier, label: Labels, scale: float = 1.0):
        for name, fn in (("score_fn", score_fn), ("classifier", classifier)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self.score_fn, self.classifier = score_fn, classifier
        self.label = _check_labels(label, None)
        self.scale = check_scale(scale)

    def log_ratios(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, num_states: int) -> torch.Tensor:
        """First-order log p_t(c | x^{i<-y}) - log p_t(c | x): [B, L, S] float64 (0 at y = x_i)."""
        labels = _per_sequence(self.label, x_t.shape[0], x_t.device)
        with torch.enable_grad():
            onehot = torch.nn.functional.one_hot(x_t, num_states).to(torch.get_default_dtype()).requires_grad_(True)
            logits = _check_logits(self.classifier(onehot, sigma_bar), labels)
            log_p = torch.log_softmax(logits, -1).gather(1, labels[:, None]).sum()  # sequences are independent
            (grad,) = torch.autograd.grad(log_p, onehot)
        grad = grad.double()
        if not bool(torch.isfinite(grad).all()):
            raise NonFiniteScoreError("the classifier's gradient is not finite")
        return grad - grad.gather(2, x_t[..., None])

    def __call__(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        sigma_bar = torch.as_tensor(sigma_bar, device=x_t.device).expand(x_t.shape[0])
        log_score = _base_rows(self.score_fn, x_t, sigma_bar, positions)
        if self.scale == 0:
            return log_score
        num_states = log_score.shape[-1]
        ratio = self.log_ratios(x_t, sigma_bar, num_states)
        return log_score.double() + self.scale * _rows(ratio, x_t, positions)


def gradient_classifier_guidance(score_fn: ScoreFn, classifier, label: Labels, scale: float = 1.0) -> GradientClassifierGuidance:
    """APPROXIMATE classifier guidance with the classifier ratio to first order in a one-hot input
    (``GradientClassifierGuidance``): one classifier forward and backward per step, for large vocabularies."""
    return GradientClassifierGuidance(score_fn, classifier, label, scale)
