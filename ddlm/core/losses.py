"""Score-entropy losses (SEDD): explicit, denoising and implicit score entropy, and DWDSE; concrete score matching.

Per position with current token x, log-scores ``log s [..., S]``, ratios ``r [..., S]`` and
weights ``w [..., S]``::

    SE = sum_{y != x} w_y (s_y - r_y log s_y + K(r_y)),   K(a) = a (log a - 1)

Every term is evaluated as ``r (expm1(v) - v)`` with ``v = log s - log r`` (and ``s`` where
``r = 0``), which is exact and >= 0 and avoids the cancellation of O(r log r) terms at small
sigma_bar, where ratios reach 1/sigma_bar. Losses are computed in at least float32.

``dse`` and ``linear_dse`` (every backend) keep that form per term: a row is a sum of
non-negative terms ``a phi(u)`` with ``phi(u) = expm1(u) - u`` and ``u = log s - log a`` formed
from a float64 split of ``log a - shift`` (``e^s`` where a = 0), plus the float64 x0 term. In
float32 each row is >= 0, exactly 0 only where the float64 value is, and within about 1e-6
relative of float64 near the optimum (s ~ r, terms ~ a v^2 / 2) as far from it (about
|v| * 6e-8 relative for large |v|, the rounding of the float32 log-score); the gradient
``w (s - r)`` is formed as ``w a expm1(u)`` and keeps the same relative accuracy. See
``ddlm.dse_backends``.
"""

from __future__ import annotations

import torch

from .checks import is_number
from .dse_backends import LinearDSE, RowDSE, bregman, eager_dse, resolve_impl
from .processes import Graph, check_batch, check_graph, check_token_ids
from .schedules import check_schedule
from .score import NonFiniteScoreError, ScoreFn, evaluate_score


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _check_log_score(log_score: torch.Tensor, x: torch.Tensor, num_states: int | None = None) -> None:
    if not isinstance(log_score, torch.Tensor) or not log_score.is_floating_point():
        raise TypeError("log_score must be a floating tensor [..., S]")
    if tuple(log_score.shape[:-1]) != tuple(x.shape):
        raise ValueError(f"log_score [..., S] of shape {list(log_score.shape)} does not match tokens of shape {list(x.shape)}")
    if num_states is not None and log_score.shape[-1] != num_states:
        raise ValueError(f"log_score has {log_score.shape[-1]} states on its last axis, the graph has {num_states}")


def _position_scalars(x_t, x0, sigma_bar, graph: Graph, shift):
    """Checked float64 per-position (w, a, b, shift), each shaped like x_t (cheap: no S axis)."""
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 of shape {list(x0.shape)} must match x_t of shape {list(x_t.shape)}")
    if shift is not None and shift.shape != x_t.shape:
        raise ValueError(f"shift must have the shape of x_t {list(x_t.shape)}, got {list(shift.shape)}")
    if isinstance(sigma_bar, torch.Tensor) and sigma_bar.is_floating_point():  # others are refused by the graph
        sigma_bar = sigma_bar.double()
    w, a, b = (t.expand(x_t.shape) for t in graph.dse_coefficients(x_t, x0, sigma_bar))
    shift = torch.zeros_like(w) if shift is None else shift.double()
    return w, a, b, shift


def _check_rows(value, like: torch.Tensor, name: str, like_name: str, finite: bool) -> None:
    """A TypeError / ValueError naming ``name`` unless ``value`` is a real tensor shaped like ``like`` (called
    ``like_name``) whose entries are >= 0 (no NaN) and, if ``finite``, not inf."""
    if not isinstance(value, torch.Tensor) or value.dtype.is_complex or value.dtype == torch.bool:
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a real tensor [..., S], got {got}")
    if value.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {list(like.shape)}, got {list(value.shape)}")
    valid = (value >= 0) & (value < torch.inf) if finite else value >= 0  # False at NaN
    if not bool(valid.all()):
        raise ValueError(f"{name} must be >= 0 and {'finite' if finite else 'not NaN'}, got {value[~valid][0].item()}")


def _off_current(weight: torch.Tensor | None, like: torch.Tensor, x: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """The weights w_y [..., S] in ``dtype`` with the current token's entry zeroed (None: 1 on every y != x);
    a ValueError unless finite, >= 0 and shaped like ``like`` (called ``name``)."""
    if weight is None:
        weight = torch.ones_like(like, dtype=dtype)
    else:
        _check_rows(weight, like, "weight", name, finite=True)
    return weight.to(dtype).scatter(-1, x.unsqueeze(-1), 0.0)


def score_entropy(log_score: torch.Tensor, x: torch.Tensor, ratio: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Score entropy per position, [...].

    log_score, ratio, weight: [..., S]; x: Long[...] current tokens. ``weight=None`` weighs every
    y != x by 1. The y = x term is always excluded.
    """
    _check_log_score(log_score, x)
    _check_rows(ratio, log_score, "ratio", "log_score", finite=False)
    check_token_ids(x, log_score.shape[-1], "x", "log_score has states")
    dtype = _compute_dtype(log_score, ratio)
    weight = _off_current(weight, log_score, x, dtype, "log_score")
    terms = bregman(log_score.to(dtype), ratio.to(dtype))
    return torch.where(weight > 0, weight * terms, torch.zeros_like(terms)).sum(-1)


def concrete_score_matching(score: torch.Tensor, x: torch.Tensor, ratio: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Concrete score matching (Meng et al. 2022) per position, [...]: sum_{y != x} w_y (s_y - r_y)^2.

    score: the model's ratio estimates s [..., S] themselves (not their logarithms), unconstrained;
    ratio, weight: [..., S] as in ``score_entropy``; x: Long[...]. Meng et al. write the concrete
    score as s - 1; the squared error is the same. Minimised exactly at s = r (gradient
    2 w (s - r)), and the expectation with conditional ratios r(x_t | x0) differs from the one
    with marginal ratios by a constant in s (the conditional ratios' variance given x_t), as for
    DSE. Unlike score entropy, which is +inf as s_y -> 0 with r_y > 0, it does not keep s positive:
    s_y <= 0 costs only w_y (s_y - r_y)^2, so a model that cannot fit r exactly may end with
    non-positive ratios, which are not valid reverse rates.
    """
    if not isinstance(score, torch.Tensor) or not score.is_floating_point():
        raise TypeError("score must be a floating tensor [..., S] of ratio estimates")
    if tuple(score.shape[:-1]) != tuple(x.shape):
        raise ValueError(f"score [..., S] of shape {list(score.shape)} does not match tokens of shape {list(x.shape)}")
    _check_rows(ratio, score, "ratio", "score", finite=False)
    check_token_ids(x, score.shape[-1], "x", "score has states")
    dtype = _compute_dtype(score, ratio)
    weight = _off_current(weight, score, x, dtype, "score")
    terms = weight * (score.to(dtype) - ratio.to(dtype)) ** 2
    return torch.where(weight > 0, terms, torch.zeros_like(terms)).sum(-1)


def dse(
    log_score: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma_bar,
    graph: Graph,
    *,
    shift: torch.Tensor | None = None,
    impl: str = "auto",
    inplace: bool = False,
) -> torch.Tensor:
    """Denoising score entropy per position, [...], with the bound's weights w_y = Q[y, x_t].

    log_score: [..., S]; x_t, x0: Long[...]; sigma_bar broadcasts against x_t. Not multiplied by
    sigma(t). Returned in log_score's dtype (at least float32).
    shift: optional [...] offset added to every log-score of a position (SEDD's scale-by-sigma
    term), applied inside the backends so the shifted tensor is never stored.
    impl: "eager" (whole-tensor reference), "torch" (row chunks, no [..., S] temporaries beyond
    the gradient), "triton" (fused kernel) or "auto" (the DDLM_DSE_IMPL environment variable if
    set, else Triton on CUDA and "torch" elsewhere). See ``ddlm.dse_backends``.
    inplace: ("torch", "triton") write the gradient over log_score during forward, so the loss
    adds no [..., S] memory; log_score is destroyed. Backward then runs once.
    """
    _check_log_score(log_score, x_t, graph.num_states)
    w, a, b, shift = _position_scalars(x_t, x0, sigma_bar, graph, shift)
    dtype = _compute_dtype(log_score)
    impl = resolve_impl(impl, log_score.device)
    if impl == "eager":
        return eager_dse(log_score, x_t, x0, shift, w, a, b).to(dtype)
    rows = (-1, graph.num_states)
    flat = [t.reshape(-1) for t in (x_t, x0, shift, w, a, b)]
    loss = RowDSE.apply(log_score.reshape(rows), *flat, impl, inplace)
    return loss.reshape(x_t.shape).to(dtype)


def linear_dse(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma_bar,
    graph: Graph,
    *,
    shift: torch.Tensor | None = None,
    impl: str = "auto",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``dse`` of the log-scores ``hidden @ weight.T + bias`` (+ shift), never storing them whole.

    hidden: [..., D]; weight: [S, D]; bias: [S] or None; other arguments as in ``dse``. The output
    head and the loss are fused: logits exist one chunk of ``chunk_rows`` positions at a time
    (default about 16M logits), in forward and again in backward. Returns [...] per position.
    """
    if hidden.shape[:-1] != x_t.shape:
        raise ValueError(f"hidden [..., D] of shape {list(hidden.shape)} does not match tokens of shape {list(x_t.shape)}")
    if weight.dim() != 2 or weight.shape != (graph.num_states, hidden.shape[-1]):
        raise ValueError(f"weight must have shape [{graph.num_states}, {hidden.shape[-1]}] (states, hidden), got {list(weight.shape)}")
    if bias is not None and bias.shape != (graph.num_states,):
        raise ValueError(f"bias must have shape [{graph.num_states}], got {list(bias.shape)}")
    w, a, b, shift = _position_scalars(x_t, x0, sigma_bar, graph, shift)
    impl = resolve_impl(impl, hidden.device)
    if impl == "eager":
        log_score = torch.nn.functional.linear(hidden, weight, bias)
        return dse(log_score, x_t, x0, sigma_bar, graph, shift=shift, impl="eager")
    chunk = chunk_rows or max(1, (1 << 24) // graph.num_states)
    flat = [t.reshape(-1) for t in (x_t, x0, shift, w, a, b)]
    loss = LinearDSE.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, *flat, impl, chunk)
    return loss.reshape(x_t.shape).to(torch.promote_types(hidden.dtype, torch.float32))


def head_dse(score_fn, head, x_t: torch.Tensor, x0: torch.Tensor, sigma_bar: torch.Tensor, graph: Graph, impl: str = "auto") -> torch.Tensor:
    """DSE per position [B, L] of a ``DDLMForDiffusion`` with its output head fused into the loss.

    score_fn(x_t, sigma_bar, output_hidden=True) gives the head's input [B, L, H] (score_fn: the
    model, or a wrapper of it such as a DDP or compiled module); head: the (unwrapped) model, whose
    ``lm_head`` and ``log_score_shift`` turn it into the log-scores inside ``linear_dse``, one chunk
    of rows at a time. Equal to ``dse(model(x_t, sigma_bar), ...)`` to float rounding (the shift
    is added in float64 inside the backend rather than subtracted in float32).
    """
    hidden = score_fn(x_t, sigma_bar, output_hidden=True)
    if not bool(torch.isfinite(hidden.detach()).all()):
        raise NonFiniteScoreError("the model's hidden states hold NaN or inf; the ratio network has diverged or is fed bad input")
    shift = None
    if head.config.scale_by_sigma:
        shift = -head.log_score_shift(sigma_bar.float()).double()[:, None].expand(x_t.shape)
    return linear_dse(hidden, head.lm_head.weight, head.lm_head.bias, x_t, x0, sigma_bar[:, None], graph, shift=shift, impl=impl)


def _check_per_sequence(value, batch: int, name: str) -> None:
    """A ValueError naming ``name`` unless ``value`` is a tensor of shape [batch]."""
    if not isinstance(value, torch.Tensor) or value.shape != (batch,):
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape [B] = [{batch}] (a tensor, one value per sequence), got {got}")


def dwdse(
    score_fn: ScoreFn, graph: Graph, noise, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None, *,
    impl: str = "auto", inplace: bool = False, head=None,
) -> torch.Tensor:
    """sigma(t) * sum_i DSE_i per sequence at given times, one draw of x_t each: [B] nats.

    x0: Long[B, L] clean tokens; t: [B] times in (0, 1]. An unbiased estimate of the integrand
    of the likelihood bound at t. impl, inplace: the ``dse`` backend (inplace: the gradient is
    written over the log-scores, which nothing else reads here). head: a ``DDLMForDiffusion``
    whose output head is fused into the loss (``head_dse``; score_fn then is that model or a
    wrapper of it), so the [B, L, S] log-scores are never stored; None: score_fn's log-scores.
    """
    check_graph(graph)
    check_schedule(noise)
    graph.check_clean(check_batch(x0))
    _check_per_sequence(t, x0.shape[0], "t")
    sigma_bar = noise.total(t)
    x_t = graph.sample_transition(x0, sigma_bar[:, None], generator=generator)
    if head is not None:
        return noise.rate(t) * head_dse(score_fn, head, x_t, x0, sigma_bar, graph, impl).sum(-1)
    log_score = evaluate_score(score_fn, x_t, sigma_bar, graph.num_states)
    return noise.rate(t) * dse(log_score, x_t, x0, sigma_bar[:, None], graph, impl=impl, inplace=inplace).sum(-1)


def dwdse_loss(
    score_fn: ScoreFn, graph: Graph, noise, x0: torch.Tensor, t_min: float = 1e-3, generator: torch.Generator | None = None, *,
    impl: str = "auto", inplace: bool = False, head=None, t: torch.Tensor | None = None, weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DWDSE training loss: one Monte Carlo draw of t ~ U[t_min, 1] per sequence, [B] nats per token.
    impl, inplace, head: how the loss is computed (see ``dwdse``), not what. t: Float64[B] times in
    [t_min, 1] drawn by the caller (``ddlm.likelihood.training_times``: stratified, antithetic or
    importance-sampled), None: i.i.d. from ``generator``; weights: [B] importance weights p(t) / q(t)
    multiplying each sequence's loss, None: 1."""
    check_batch(x0)
    if not (is_number(t_min) and 0 <= t_min < 1):
        raise ValueError(f"t_min must lie in [0, 1), got {t_min!r}")
    if weights is not None:
        _check_per_sequence(weights, x0.shape[0], "weights")
        valid = (weights >= 0) & (weights < torch.inf)  # False at NaN
        if not bool(valid.all()):
            raise ValueError(f"weights must be finite and >= 0 (importance weights p(t) / q(t)), got {weights[~valid][0].item()}")
    if t is None:
        t = t_min + (1 - t_min) * torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=x0.device)
    loss = dwdse(score_fn, graph, noise, x0, t, generator=generator, impl=impl, inplace=inplace, head=head) / x0.shape[-1]
    return loss if weights is None else loss * weights


def implicit_score_entropy(score_fn: ScoreFn, x: torch.Tensor, sigma_bar: torch.Tensor, graph: Graph, batch_size: int = 1024) -> torch.Tensor:
    """Implicit score entropy per sequence, [B]: needs samples of p_t but no ratios.

    ISE(x) = sum_i sum_{y != x_i} [Q[y, x_i] s(x)_{i,y} - Q[x_i, y] log s(x^{i<-y})_{i, x_i}],
    where x^{i<-y} is x with position i set to y. Its expectation under x ~ p_t differs from
    that of SE (weights Q[y, x], true marginal ratios) by a constant. Cost: one score_fn call on
    x plus one on every neighbour with Q[x_i, y] > 0 (L (S - 1) for Uniform, the unmasked
    positions for Absorbing), in chunks of ``batch_size`` sequences: meant for small S and L.

    x: Long[B, L] samples of p_t; sigma_bar: [B].
    """
    graph.check_tokens(x)
    log_s = evaluate_score(score_fn, x, sigma_bar, graph.num_states)
    dtype = _compute_dtype(log_s)
    positive = (graph.rate_into(x).to(dtype) * torch.exp(log_s.to(dtype))).sum((-2, -1))

    out_rates = graph.rate_from(x)  # [B, L, S]
    seq, pos, new = torch.nonzero(out_rates > 0, as_tuple=True)
    negative = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
    for start in range(0, seq.numel(), batch_size):
        b, i, y = seq[start : start + batch_size], pos[start : start + batch_size], new[start : start + batch_size]
        neighbours = x[b].clone()
        neighbours[torch.arange(b.numel(), device=x.device), i] = y
        log_n = evaluate_score(score_fn, neighbours, sigma_bar[b], graph.num_states).to(dtype)
        back = log_n[torch.arange(b.numel(), device=x.device), i, x[b, i]]  # log s(x^{i<-y})_{i, x_i}
        negative.index_add_(0, b, out_rates[b, i, y].to(dtype) * back)
    return positive - negative


# ---------------------------------------------------------------------------------------------
# The autoregressive baseline: next-token cross-entropy on the same network (objective="ar").


def _ar_log_probs(model, x0: torch.Tensor, min_length: int = 2) -> torch.Tensor:
    """Checked next-token log-probabilities [B, L, N] of ``model(x0)``."""
    config = getattr(model, "config", None)
    num_tokens = getattr(config, "vocab_size", None)
    check_token_ids(x0, num_tokens, "x0")  # without a config, the range is checked against the output below
    if x0.dim() != 2:
        raise ValueError(f"x0 must be Long[B, L], got shape {list(x0.shape)}")
    if x0.shape[1] < min_length:
        raise ValueError(f"x0 must have length L >= {min_length} (position i predicts token i + 1), got L = {x0.shape[1]}")
    if config is not None and getattr(config, "objective", "ar") != "ar":
        raise ValueError(f"the AR loss needs an autoregressive model (objective='ar'), got objective={config.objective!r}")
    log_probs = model(x0)
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3 or tuple(log_probs.shape[:2]) != tuple(x0.shape):
        got = list(log_probs.shape) if isinstance(log_probs, torch.Tensor) else type(log_probs).__name__
        raise ValueError(f"model must return next-token log-probabilities [B, L, N] for x0 of shape {list(x0.shape)}, got {got}")
    if num_tokens is None:
        check_token_ids(x0, log_probs.shape[-1], "x0", "the model's output has entries")
    return log_probs


def ar_loss(model, x0: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, nats per predicted token (a scalar to backpropagate).

    model: an autoregressive ``DDLMForDiffusion`` (``objective="ar"``) or any callable
    ``x0 -> log-probabilities [B, L, N]`` in which position i predicts token i + 1.
    x0: Long[B, L], L >= 2. Positions 0..L-2 predict tokens 1..L-1: B (L - 1) predictions.
    """
    log_probs = _ar_log_probs(model, x0).float()
    # Score every position against the next token and ignore the last one: the same mean over the
    # B (L - 1) predictions, without copying the non-contiguous slice log_probs[:, :-1] ([B, L, N]).
    targets = torch.nn.functional.pad(x0[:, 1:], (0, 1), value=-100)
    return torch.nn.functional.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1), ignore_index=-100)


def ar_nll(model, x0: torch.Tensor, context: int | None = None) -> torch.Tensor:
    """Exact -log p(x0) per sequence by the chain rule, [B] float64 nats.

    context None: the first token is given and the L - 1 others are scored, -log p(x0[1:] | x0[0]).
    context a token id (e.g. the EOS that separates documents): the model reads
    [context, x0[:-1]] and all L tokens are scored, -log p(x0 | context), so a block costs what a
    diffusion model's bound on the same block covers. Perplexity: exp(sum / scored tokens).
    The model's float32 log-probabilities are summed in float64 under ``torch.no_grad``; put
    the model in eval mode first (dropout). Arguments as in ``ar_loss``.
    """
    with torch.no_grad():
        if context is None:
            log_probs = _ar_log_probs(model, x0)
            picked = log_probs[:, :-1].gather(-1, x0[:, 1:, None]).squeeze(-1)
        else:
            if x0.dim() != 2:
                raise ValueError(f"x0 must be Long[B, L], got shape {list(x0.shape)}")
            inputs = torch.cat([torch.full_like(x0[:, :1], context), x0[:, :-1]], 1)
            log_probs = _ar_log_probs(model, inputs, min_length=1)
            check_token_ids(x0, log_probs.shape[-1], "x0", "the model's output has entries")
            picked = log_probs.gather(-1, x0[..., None]).squeeze(-1)
        return -picked.double().sum(-1)
