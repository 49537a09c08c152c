"""Likelihood bounds on strings for ``DiffusionPipeline``: ``nll_bound`` per text (per-text or dataset
estimator over the text's blocks) and ``conditional_nll`` per (context, continuation) pair."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count
from ..likelihood.bounds import block_estimates, conditional_nll_bound, nll_bound
from .generation import resolve_generator
from .scores import (DATASET_MIN_BLOCKS, DEFAULT_NUM_T, ESTIMATORS, ConditionalScore, TextBound, blocks_by_length, check_scorable,
                     encode_pairs, model_batch_size, pairs_by_length, text_blocks)

BLOCKS_PER_BOUND = 64  # nll_bound, per-text estimator: blocks bounded together (one progress step; fixed, so results do not depend on batch_size)


def batch_size_for(pipe, batch_size: int | None, length: int) -> int:
    """``batch_size``, or the memory-bounded number of length-``length`` sequences per model call."""
    return batch_size or model_batch_size(pipe.model, length, pipe.device, pipe.graph.num_states)


def choose_estimators(per_text: list[list[list[int]]], estimator: str) -> list[str]:
    """The estimator of each text ("auto" resolved by its block count); a ValueError for a one-block dataset text."""
    chosen = [estimator if estimator != "auto" else "dataset" if len(blocks) >= DATASET_MIN_BLOCKS else "per-text" for blocks in per_text]
    for index, (kind, blocks) in enumerate(zip(chosen, per_text)):
        if kind == "dataset" and len(blocks) < 2:
            raise ValueError(f"text {index} is one block; the dataset estimator takes its standard error across blocks "
                             "and needs at least 2: use estimator='per-text' (or 'auto')")
    return chosen


def nll_bounds(pipe, texts: Sequence[str], num_t: int | None, *, estimator: str, batch_size: int | None, generator, seed,
               progress: bool, **bound_kwargs) -> list[TextBound]:
    """``DiffusionPipeline.nll_bound``: the per-text texts first (grouped by block length), then each dataset text.

    estimator: "per-text" (``ddlm.likelihood.nll_bound``: num_t times for every block, default 128, a
    standard error per block); "dataset" (``ddlm.likelihood.block_estimates``: num_t times per block,
    default 1, stratified over all of a text's blocks, the standard error from the strata: needs at
    least 2 blocks per text); "auto": "dataset" for a text of at least ``DATASET_MIN_BLOCKS`` (16)
    blocks, "per-text" otherwise. Model calls per token: num_t / block length either way, so the
    dataset estimator at its default costs 1/128 of the per-text one. The progress bar counts blocks.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    check_count("num_t", num_t, allow_none=True)
    check_count("batch_size", batch_size, allow_none=True)
    generator = resolve_generator(generator, seed, pipe.device)
    per_text = text_blocks(pipe.tokenizer, texts, pipe.max_length)
    check_scorable(pipe.model, [[token for block in blocks for token in block] for blocks in per_text])
    chosen = choose_estimators(per_text, estimator)
    bounds: list[TextBound | None] = [None] * len(texts)
    total_blocks = sum(len(blocks) for kind, blocks in zip(chosen, per_text) if kind == "per-text")
    with tqdm(total=total_blocks, desc="nll bound (per-text)", unit="block", disable=not progress or not total_blocks) as bar:
        selected = [blocks if kind == "per-text" else [] for kind, blocks in zip(chosen, per_text)]
        per_text_bounds(pipe, texts, selected, bounds, num_t or DEFAULT_NUM_T["per-text"], batch_size, generator, bar, bound_kwargs)
    for index, (text, kind, blocks) in enumerate(zip(texts, chosen, per_text)):
        if kind == "dataset":
            bounds[index] = dataset_bound(pipe, text, blocks, num_t or DEFAULT_NUM_T["dataset"], batch_size, generator, progress,
                                          bound_kwargs)
    return bounds


def per_text_bounds(pipe, texts, selected, bounds, num_t, batch_size, generator, bar, bound_kwargs) -> None:
    """Fill ``bounds`` for the texts with blocks in ``selected``: each length's blocks in groups of
    ``BLOCKS_PER_BOUND`` (the progress bar's step), model calls of ``batch_size`` sequences (default:
    memory-bounded). The groups do not depend on ``batch_size``, so neither do the draws: same seed, same bound."""
    parts = [[] for _ in texts]  # per text, per block: (integral, prior, stderr, tokens)
    for length, members in sorted(blocks_by_length(selected).items()):
        step = batch_size_for(pipe, batch_size, length)
        for start in range(0, len(members), BLOCKS_PER_BOUND):
            chunk = members[start:start + BLOCKS_PER_BOUND]
            x0 = torch.tensor([ids for _, ids in chunk], device=pipe.device)
            result = nll_bound(pipe.score_fn, pipe.graph, pipe.noise, x0, num_t, generator, batch_size=step, **bound_kwargs)
            for row, (index, _) in enumerate(chunk):
                parts[index].append((float(result.integral[row]), float(result.prior[row]), float(result.stderr[row]), length))
            bar.update(len(chunk))
    for index, (text, text_parts) in enumerate(zip(texts, parts)):
        if not text_parts:
            continue
        integral, prior, stderr, tokens = zip(*text_parts)
        bounds[index] = TextBound(sum(tokens), len(text.encode()), len(text_parts), sum(integral), sum(prior),
                                  math.sqrt(sum(se**2 for se in stderr)), num_t, "per-text", num_t * len(text_parts))


def dataset_bound(pipe, text: str, blocks: list[list[int]], num_t: int, batch_size, generator, progress, bound_kwargs) -> TextBound:
    """One text's bound by the dataset estimator: ``num_t`` times per block, stratified over its blocks."""
    ids = [torch.tensor(block, device=pipe.device) for block in blocks]
    estimates = block_estimates(pipe.score_fn, pipe.graph, pipe.noise, ids, num_t, generator,
                                batch_size=batch_size_for(pipe, batch_size, pipe.max_length), progress=progress, **bound_kwargs)
    total, stderr = estimates.total()
    integral = float(estimates.integral.sum())
    return TextBound(sum(map(len, blocks)), len(text.encode()), len(blocks), integral, total - integral, stderr,
                     num_t, "dataset", num_t * len(blocks))


def conditional_nlls(pipe, contexts: Sequence[str], continuations: Sequence[str], num_t: int, *, seed, generator,
                     batch_size: int | None, truncate_context: bool, progress: bool, **bound_kwargs) -> list[ConditionalScore]:
    """``DiffusionPipeline.conditional_nll``: the pairs grouped by total length, bounded a model call's worth at a time.

    The bound (``ddlm.likelihood.conditional_nll_bound``) is one on the data's conditional for absorbing
    models, on the clamped reverse process's conditional for uniform ones.
    """
    check_count("num_t", num_t)
    check_count("batch_size", batch_size, allow_none=True)
    generator = resolve_generator(generator, None if generator is not None else seed, pipe.device)
    pairs = encode_pairs(pipe.tokenizer, contexts, continuations, pipe.max_length, truncate_context=truncate_context)
    check_scorable(pipe.model, [continuation for _, continuation in pairs], "continuation")
    scores: list[ConditionalScore | None] = [None] * len(pairs)
    with tqdm(total=len(pairs), desc="conditional bound", disable=not progress) as bar:
        for length, members in pairs_by_length(pairs):
            step = batch_size_for(pipe, batch_size, length)
            group = max(1, step // num_t)
            for start in range(0, len(members), group):
                chunk = members[start:start + group]
                for index, score in zip(chunk, pair_scores(pipe, [pairs[i] for i in chunk], num_t, generator, step, bound_kwargs)):
                    scores[index] = score
                bar.update(len(chunk))
    return scores


def pair_scores(pipe, chunk, num_t: int, generator, step: int, bound_kwargs) -> list[ConditionalScore]:
    """The scores of ``chunk``, (context ids, continuation ids) pairs of one total length, in one bound call."""
    x0 = torch.tensor([context + continuation for context, continuation in chunk], device=pipe.device)
    fixed = torch.zeros_like(x0, dtype=torch.bool)
    for row, (context, _) in enumerate(chunk):
        fixed[row, :len(context)] = True
    result = conditional_nll_bound(pipe.score_fn, pipe.graph, pipe.noise, x0, fixed, num_t, generator, batch_size=step, **bound_kwargs)
    greedy = greedy_hits(pipe, x0, fixed)
    return [ConditionalScore(float(result.bound[row]), float(result.stderr[row]), len(continuation),
                             None if greedy is None else bool(greedy[row]), num_t)
            for row, (_, continuation) in enumerate(chunk)]


@torch.no_grad()
def greedy_hits(pipe, x0: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor | None:
    """Bool[B]: whether every free token of x0 Long[B, L] is the argmax over real tokens of the model's p(x0_i | x_t)
    with all free positions masked (absorbing; one model call at the sigma_bar whose mask probability
    1 - e^-sigma_bar is the masked fraction); None for graphs without a mask."""
    mask_id = pipe.graph.mask_id
    if mask_id is None:
        return None
    free = ~fixed
    fraction = free.double().mean(1).clamp(max=1 - 1e-6)
    sigma_bar = (-torch.log1p(-fraction)).clamp(max=float(pipe.noise.total(1.0))).to(pipe.device)
    x_t = torch.where(free, torch.full_like(x0, mask_id), x0)
    log_score = pipe.score_fn(x_t, sigma_bar, positions=free)  # [R, S]: p(x0_i = y | x_t) is proportional to s_y
    hits = (log_score[:, :mask_id].argmax(-1) == x0[free]).long()
    rows = free.nonzero()[:, 0]
    misses = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device).index_add_(0, rows, 1 - hits)
    return misses == 0
