"""Scoring text with any ddlm model under one blocking rule, so diffusion and AR numbers share a table.

A text is tokenised without special tokens and cut into blocks of the model's maximum length (the
last one shorter); each block is scored on its own and the blocks' nats are summed. A diffusion
model gives an upper bound on -log p(block) with a Monte Carlo standard error
(``DiffusionPipeline.nll_bound``); an autoregressive model gives the exact -log p(block) by the
chain rule, its first token conditioned on the EOS token that separates documents in training, so
both cover the same tokens.

Two estimators of a diffusion model's bound: per-text (``num_t`` times for every block, a standard
error per block) and dataset-level (a few times per block, stratified over all of a text's blocks,
the standard error from the strata; ``ddlm.likelihood.block_estimates``). Conditional scores
-log p(continuation | context) (``score_continuations``, ``lambada``) use the conditional bound of
``ddlm.likelihood.conditional_nll_bound`` or, for AR models, the exact chain rule.

The records, the blocking rule, pair encoding and batch sizes are defined in ``ddlm.text_scores`` and
model loading in ``ddlm.loading``, below ``ddlm.pipeline``, which uses them (this module uses the
pipeline for diffusion models); every one of their names is importable from here as well.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count
from ..core.losses import ar_nll
from ..models import DDLMForDiffusion
from ..text.corpora import eos_id
from ..text.loading import TOKENIZER_FILES, check_vocabulary, load_model, load_tokenizer, loading_progress
from ..text.scores import (CPU_MEMORY_CAP, DATASET_MIN_BLOCKS, DEFAULT_NUM_T, ESTIMATORS, MEMORY_FRACTION, BoundTotals,
                           ConditionalScore, TextBound, available_memory, blocks_by_length, default_batch_size, encode_pair,
                           encode_pairs, model_batch_size, pairs_by_length, text_blocks)


@torch.no_grad()
def ar_text_nll(model: DDLMForDiffusion, tokenizer, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = True) -> list[TextBound]:
    """Exact -log p(text) of an autoregressive model (objective='ar'), blocks as in ``text_blocks``."""
    check_count("batch_size", batch_size, allow_none=True)
    check_vocabulary(model, tokenizer)
    model.eval()
    device = next(model.parameters()).device
    context = eos_id(tokenizer)
    per_text = text_blocks(tokenizer, texts, model.config.max_position_embeddings)
    totals = [0.0] * len(texts)
    groups = sorted(blocks_by_length(per_text).items())
    with tqdm(total=sum(len(members) for _, members in groups), desc="ar nll", unit="block", disable=not progress) as bar:
        for length, members in groups:
            step = batch_size or model_batch_size(model, length, device)
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                nll = ar_nll(model, torch.tensor([ids for _, ids in chunk], device=device), context=context)
                for (index, _), value in zip(chunk, nll.tolist()):
                    totals[index] += value
                bar.update(len(chunk))
    return [TextBound(sum(map(len, blocks)), len(text.encode()), len(blocks), total, 0.0, 0.0, 0, "exact", len(blocks))
            for text, blocks, total in zip(texts, per_text, totals)]



def score_texts(model: DDLMForDiffusion, tokenizer, texts: Sequence[str], num_t: int | None = None, *, estimator: str = "per-text",
                batch_size: int | None = None, seed: int | None = None, progress: bool = True, **bound_kwargs) -> list[TextBound]:
    """-log p(text) per text: the likelihood bound of a diffusion model (``DiffusionPipeline.nll_bound``: estimator,
    ``num_t`` t per block, ``bound_kwargs`` to the bound) or the exact value of an AR model."""
    check_count("num_t", num_t, allow_none=True)
    check_count("batch_size", batch_size, allow_none=True)
    if model.config.objective == "ar":
        return ar_text_nll(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    from ..text.pipeline import DiffusionPipeline

    return DiffusionPipeline(model, tokenizer).nll_bound(texts, num_t, estimator=estimator, batch_size=batch_size, seed=seed,
                                                         progress=progress, **bound_kwargs)


def eval_table(files: Sequence[str], per_model: Sequence[Sequence[TextBound]], t_sampling: str = "stratified",
               t_power: float = 2.0, width: int = 100) -> str:
    """``ddlm eval``'s table within ``width`` columns: per file its name, the estimate in nats (one row per model:
    tokens, blocks, t per block, estimator, model calls per token, integral, prior, -log p +- SE), then the same per
    token (nats +- SE, perplexity with a ~95 % interval, its ratio to model #1's, bits per UTF-8 byte); notes last.
    per_model: one list per model (#1 first) of its results, in the order of ``files``."""
    import textwrap

    lines = []
    for f, path in enumerate(files):
        lines += [f"file: {path}", f"{'model':<5} {'tokens':>8} {'blocks':>6} {'t/block':>7} {'estimator':>9} {'calls/tok':>9} "
                  f"{'integral':>11} {'prior':>8} {'-log p (nats) +- SE':>24}"]
        for m, results in enumerate(per_model, 1):
            r = results[f]
            lines.append(f"{f'#{m}':<5} {r.num_tokens:>8} {r.num_blocks:>6} {'exact' if r.exact else r.num_t:>7} {r.estimator:>9} "
                         f"{r.calls_per_token:>9.4f} {r.integral:>11.2f} {r.prior:>8.2f} {r.bound:>12.2f} +- {r.stderr:.2f}")
        lines.append(f"{'model':<5} {'nats/token +- SE':>17} {'ppl':>10} {'ppl ~95% interval':>22} {'ppl / #1':>8} {'bits/byte':>9}")
        for m, results in enumerate(per_model, 1):
            r = results[f]
            low, high = r.ppl_interval
            lines.append(f"{f'#{m}':<5} {r.per_token:>7.4f} +- {r.stderr / r.num_tokens:<6.4f} {r.ppl:>10.3f} "
                         f"{f'[{low:.3f}, {high:.3f}]':>22} {r.ppl / per_model[0][f].ppl:>8.3f} {r.bits_per_byte:>9.4f}")
    notes = []
    if any(r.exact for results in per_model for r in results):
        notes.append("(AR: exact chain-rule -log p; each block's first token is conditioned on EOS)")
    if any(not r.exact for results in per_model for r in results):
        notes.append(f"(diffusion: upper bound = integral + prior; {t_sampling} u, t = u^{t_power:g}; +- is one standard error; "
                     "per-text: every block gets t/block times; dataset: t/block times per block, stratified over all the "
                     "file's blocks, the error from the strata; calls/tok: model calls (one block each) per token)")
    return "\n".join(lines + [wrapped for note in notes for wrapped in textwrap.wrap(note, width, break_on_hyphens=False)])



# --------------------------------------------------------------------------- conditional scores


@torch.no_grad()
def ar_conditional_scores(model: DDLMForDiffusion, tokenizer, contexts: Sequence[str], continuations: Sequence[str], *,
                          batch_size: int | None = None, truncate_context: bool = False, progress: bool = False) -> list[ConditionalScore]:
    """Exact -log p(continuation | EOS, context) of an AR model by the chain rule, per pair (``encode_pairs``).

    The model reads [EOS] + context + continuation[:-1] (EOS: the document start it was trained
    with) and the continuation's tokens are scored; greedy: each is the argmax of its prediction.
    """
    check_count("batch_size", batch_size, allow_none=True)
    check_vocabulary(model, tokenizer)
    model.eval()
    device = next(model.parameters()).device
    eos = eos_id(tokenizer)
    pairs = encode_pairs(tokenizer, contexts, continuations, model.config.max_position_embeddings, truncate_context=truncate_context)
    scores: list[ConditionalScore | None] = [None] * len(pairs)
    with tqdm(total=len(pairs), desc="ar conditional", disable=not progress) as bar:
        for length, members in pairs_by_length(pairs):
            step = batch_size or model_batch_size(model, length, device)
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                sequences = torch.tensor([[eos] + pairs[i][0] + pairs[i][1] for i in chunk], device=device)
                log_probs = model(sequences[:, :-1])  # [n, length, N]: position j predicts token j + 1
                for row, index in enumerate(chunk):
                    first = len(pairs[index][0])
                    target = sequences[row, first + 1:]
                    predicted = log_probs[row, first:]
                    nll = -float(predicted.double().gather(-1, target[:, None]).sum())
                    scores[index] = ConditionalScore(nll, 0.0, len(target), bool((predicted.argmax(-1) == target).all()), 0)
                bar.update(len(chunk))
    return scores


def score_continuations(model: DDLMForDiffusion, tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                        num_t: int = 128, *, seed: int | None = 0, batch_size: int | None = None, truncate_context: bool = False,
                        progress: bool = False, **bound_kwargs) -> list[ConditionalScore]:
    """-log p(continuation | context) per pair: a diffusion model's conditional bound
    (``DiffusionPipeline.conditional_nll``, ``num_t`` t per pair) or an AR model's exact value."""
    if model.config.objective == "ar":
        return ar_conditional_scores(model, tokenizer, contexts, continuations, batch_size=batch_size,
                                     truncate_context=truncate_context, progress=progress)
    from ..text.pipeline import DiffusionPipeline

    return DiffusionPipeline(model, tokenizer).conditional_nll(contexts, continuations, num_t, seed=seed, batch_size=batch_size,
                                                               truncate_context=truncate_context, progress=progress, **bound_kwargs)


def split_last_word(text: str) -> tuple[str, str]:
    """(context, " " + last word) of a LAMBADA passage: the last word is everything after the last space."""
    if not isinstance(text, str):
        raise TypeError(f"a LAMBADA passage must be a str, got {type(text).__name__}")
    stripped = text.strip()
    if " " not in stripped:
        raise ValueError(f"a LAMBADA passage needs a context and a last word separated by a space, got {text[:60]!r}")
    context, word = stripped.rsplit(" ", 1)
    return context, " " + word


def lambada(pipe, texts: Sequence[str], num_t: int = 128, *, seed: int | None = 0, batch_size: int | None = None,
            truncate_context: bool = False, progress: bool = False, **bound_kwargs) -> dict:
    """LAMBADA's last-word accuracy and perplexity of passages ``texts``.

    pipe: a ``DiffusionPipeline`` or a (model, tokenizer) pair (diffusion or AR). Each passage is
    split at its last space (``split_last_word``); the last word, with its leading space, is the
    continuation. accuracy: the fraction of passages whose whole last word is the greedy
    prediction (``ConditionalScore.greedy``; None for uniform models); ppl: exp(mean over
    passages of -log p(last word | context)), as lm-evaluation-harness reports it (a bound for
    diffusion models), with ppl_per_token = exp(total nats / total tokens) beside it; stderr: the
    Monte Carlo standard error of the mean nats (0 for AR models).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of passages; wrap a single passage in a list")
    if not len(texts):
        raise ValueError("texts is empty; nothing to score")
    contexts, words = zip(*(split_last_word(text) for text in texts))
    options = dict(seed=seed, batch_size=batch_size, truncate_context=truncate_context, progress=progress)
    if isinstance(pipe, tuple):
        scores = score_continuations(*pipe, list(contexts), list(words), num_t, **options, **bound_kwargs)
    else:
        scores = pipe.conditional_nll(list(contexts), list(words), num_t, **options, **bound_kwargs)
    greedy = [s.greedy for s in scores]
    mean_nll = sum(s.nll for s in scores) / len(scores)
    return {
        "accuracy": None if None in greedy else sum(greedy) / len(greedy),
        "ppl": math.exp(mean_nll),
        "ppl_per_token": math.exp(sum(s.nll for s in scores) / sum(s.tokens for s in scores)),
        "nll": mean_nll,
        "stderr": math.sqrt(sum(s.stderr**2 for s in scores)) / len(scores),
        "num_examples": len(scores),
        "tokens": sum(s.tokens for s in scores),
        "num_t": scores[0].num_t,
        "exact": scores[0].exact,
    }
