"""Plain generation for ``DiffusionPipeline``: seeds, batched sampling with summed statistics, ids to text."""

from __future__ import annotations

import functools
import numbers
from typing import Iterable

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count, is_int
from ..core.processes import Graph, check_token_ids
from ..core.score import ScoreFn
from ..sampling.guidance import check_scale, guided_model_score, prompt_guidance
from ..sampling.loop import sample
from ..sampling.score_cache import is_time_independent
from .tokenization import decode_text

MASK_TEXT = "[MASK]"  # how a still-masked position reads when sampling ends without denoising
CALL_STATS = ("network_calls", "sequences_scored", "positions_scored")  # a sampler's counts that add up over runs


def resolve_generator(generator: torch.Generator | None, seed: int | None, device) -> torch.Generator | None:
    """``generator``, or a new one on ``device`` seeded with ``seed``; a ValueError if both are given."""
    if generator is not None and seed is not None:
        raise ValueError("pass generator= or seed=, not both")
    return torch.Generator(device).manual_seed(seed) if seed is not None else generator


def add_stats(totals: dict, run_stats: dict) -> None:
    """Add one sampler run's ``CALL_STATS`` to ``totals`` and keep its cache report."""
    for key in CALL_STATS:
        totals[key] += run_stats[key]
    totals["cache"] = run_stats["cache"]


def sampling_score_fn(model, score_fn: ScoreFn, label: int | None, guidance_scale: float) -> ScoreFn:
    """``DiffusionPipeline.sampling_score_fn``: ``score_fn`` (the pipeline's, over ``model``) declaring whether the
    model is time-independent, or for a ``label`` the classifier-free guided score of ``model``."""
    scale = check_scale(guidance_scale, "guidance_scale")
    if label is not None:
        if not is_int(label, 0):
            raise ValueError(f"label must be an int class id >= 0, got {label!r:.80}")
        return guided_model_score(model, label, scale)
    if scale != 1:
        raise ValueError(f"guidance_scale={guidance_scale!r} needs label= (the class to guide towards) or, for a model "
                         "without classes, a prompt or given tokens to guide on (generate, sample_blocks, infill, sample with fixed=)")
    fn = functools.partial(score_fn)
    fn.accepts_positions = True
    fn.time_independent = is_time_independent(model)
    return fn


def has_classes(model) -> bool:
    """Whether ``model`` is class-conditional (``config.num_classes``, else ``num_classes``, an int > 0)."""
    config = getattr(model, "config", None)
    return is_int(getattr(config, "num_classes", None) if config is not None else getattr(model, "num_classes", None), 1)


def guided_score_fn(pipe, label: int | None, guidance_scale: float, condition: torch.Tensor | None) -> ScoreFn:
    """The score function a sampler of ``pipe`` runs: ``pipe.sampling_score_fn(label, guidance_scale)``, or for a model
    without classes and guidance_scale != 1 guidance on the prompt (``ddlm.guidance.prompt_guidance``) whose positions
    are ``condition`` Bool[L] (or Bool[B, L]; None: there is none, a ValueError)."""
    scale = check_scale(guidance_scale, "guidance_scale")
    if label is not None or scale == 1 or has_classes(pipe.model):
        return pipe.sampling_score_fn(label, guidance_scale)
    if pipe.graph.mask_id is None:
        raise ValueError(f"guidance_scale={guidance_scale!r} without label= guides on a prompt by masking it, which needs an "
                         f"absorbing model, got {pipe.graph!r}")
    if condition is None:
        raise ValueError(f"guidance_scale={guidance_scale!r} needs something to guide on: a prompt (generate(prompt=...), "
                         "sample_blocks(prompt_ids=...)), given tokens (infill, sample with fixed=) or a class label=")
    return prompt_guidance(pipe.sampling_score_fn(), condition, pipe.graph.mask_id, scale)


def clamped_condition(fixed, device) -> torch.Tensor | None:
    """The clamped positions as guidance's condition: Bool[L] (Bool[B, L] where sequences differ); None if there are none."""
    if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool or not bool(fixed.any()):
        return None
    return (fixed[0] if fixed.dim() == 2 and bool((fixed == fixed[:1]).all()) else fixed).to(device)


def sample_batches(pipe, num_samples: int, length: int, steps: int, predictor: str, *, x_init, fixed, denoise: bool,
                   batch_size: int | None, generator, seed, progress: bool, stats: dict | None, label, guidance_scale,
                   **sampler_options) -> torch.Tensor:
    """``DiffusionPipeline.sample``: ``ddlm.sampling.sample`` in batches of ``batch_size`` with one generator.

    sampler_options go to ``ddlm.sampling.sample`` as they are: cache (None: on for time-independent
    models), dtype, impl, and the following. Decoding strategies of absorbing models
    (``ddlm.decoding``): temperature / top_k / top_p reshape the token a masked position unmasks to;
    predictor "confidence" with confidence / unmask_schedule / threshold / entropy_bound unmasks the most
    confident positions in parallel. Neither samples the model's distribution exactly. Correctors
    (``ddlm.correctors``): remask (eta in [0, 1], absorbing) / remask_window remask unmasked tokens
    before each step with exact marginals and no extra network call; corrector_steps / corrector_size
    add p_t-invariant corrector steps after each predictor step (any model; one network call each).
    label / guidance_scale: ``guided_score_fn``, the clamped positions ``fixed`` being the condition of a model without classes.
    """
    check_count("num_samples", num_samples)
    check_count("length", length)
    if length > pipe.max_length:
        raise ValueError(f"length {length} exceeds the model's maximum length {pipe.max_length}")
    check_count("steps", steps)
    check_count("batch_size", batch_size, allow_none=True)
    generator = resolve_generator(generator, seed, pipe.device)
    batch_size = batch_size or num_samples
    batches = []
    score_fn = guided_score_fn(pipe, label, guidance_scale, clamped_condition(fixed, pipe.device))
    totals = dict.fromkeys(CALL_STATS, 0)
    for start in tqdm(range(0, num_samples, batch_size), desc="batches", disable=not progress or batch_size >= num_samples):
        n = min(batch_size, num_samples - start)
        batch_stats = {}
        batches.append(sample(
            score_fn, pipe.graph, pipe.noise, (n, length), steps, predictor, denoise, generator,
            x_init=None if x_init is None else x_init.to(pipe.device).expand(n, length),
            fixed=None if fixed is None else fixed.to(pipe.device).expand(n, length),
            device=pipe.device, progress=progress, stats=batch_stats, **sampler_options))
        add_stats(totals, batch_stats)
    if stats is not None:
        stats.update(totals)
    return torch.cat(batches)


def token_list(ids, graph: Graph) -> list[int]:
    """``ids`` (a 1-D integer tensor or a sequence of ints) as a list of states of ``graph``; a TypeError or
    ValueError naming ids otherwise."""
    if isinstance(ids, torch.Tensor):
        if check_token_ids(ids, graph.num_states, "ids", f"{graph!r} has states").dim() != 1:
            raise ValueError(f"ids must be one sequence of token ids (1-D), got shape {list(ids.shape)}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a 1-D integer tensor or a sequence of int token ids, got {type(ids).__name__}")
    ids = list(ids)
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise TypeError(f"ids must hold int token ids, got {token!r:.80}")
    if ids and (min(ids) < 0 or max(ids) >= graph.num_states):
        raise ValueError(f"ids holds ids in [{min(ids)}, {max(ids)}], but {graph!r} has states 0..{graph.num_states - 1}")
    return [int(token) for token in ids]


def decode_ids(tokenizer, graph: Graph, ids) -> str:
    """``DiffusionPipeline.decode``: runs of real tokens decoded UTF-8-safely, each mask id read as ``MASK_TEXT``."""
    pieces, run = [], []
    for token in token_list(ids, graph) + [None]:
        if token is not None and token < graph.num_tokens:
            run.append(token)
            continue
        if run:
            pieces.append(decode_text(tokenizer, run))
            run = []
        if token is not None:
            pieces.append(MASK_TEXT)
    return "".join(pieces)
