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
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .checks import check_count, check_local_path, check_text, looks_like_path
from .data import eos_id
from .losses import ar_nll
from .model import DDLMForDiffusion


class BoundTotals:
    """What a summed -log p reports, for dataclasses with integral, prior, stderr (nats) and num_tokens."""

    @property
    def bound(self) -> float:
        """Upper bound on -log p, nats (the exact value for AR models): integral + prior."""
        return self.integral + self.prior

    @property
    def per_token(self) -> float:
        return self.bound / self.num_tokens

    @property
    def ppl(self) -> float:
        """exp(bound / scored tokens): the perplexity bound (exact for AR models)."""
        return math.exp(self.per_token)

    @property
    def ppl_stderr(self) -> float:
        """One standard error of the perplexity, to first order: ppl * stderr / tokens."""
        return self.ppl * self.stderr / self.num_tokens


@dataclass
class TextBound(BoundTotals):
    """-log p of one text in nats: a diffusion model's bound (integral + prior, with a standard error) or an
    AR model's exact value (integral, prior 0, stderr 0, num_t 0)."""

    num_tokens: int
    num_bytes: int
    num_blocks: int
    integral: float
    prior: float
    stderr: float
    num_t: int  # t samples per block; 0 for an exact value
    estimator: str = "per-text"  # "per-text", "dataset" or "exact" (AR)
    model_calls: int = 0  # sequences the model scored (one forward of one block each)

    @property
    def calls_per_token(self) -> float:
        """Model calls (one sequence each) per scored token: the estimator's cost."""
        return self.model_calls / self.num_tokens

    @property
    def exact(self) -> bool:
        return self.num_t == 0

    @property
    def ppl_interval(self) -> tuple[float, float]:
        """exp((bound -+ 2 stderr) / tokens): about a 95 % interval for the perplexity bound."""
        return math.exp((self.bound - 2 * self.stderr) / self.num_tokens), math.exp((self.bound + 2 * self.stderr) / self.num_tokens)

    @property
    def bits_per_byte(self) -> float:
        """The bound in bits per UTF-8 byte of the text (comparable across tokenizers)."""
        return self.bound / math.log(2) / self.num_bytes


def text_blocks(tokenizer, texts: Sequence[str], block_size: int) -> list[list[list[int]]]:
    """Per text, its token ids (no special tokens) in blocks of ``block_size`` (the last one shorter)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single text in a list")
    blocks = []
    for index, text in enumerate(texts):
        ids = tokenizer(check_text(f"texts[{index}]", text), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"text {index} tokenises to nothing; nothing to score")
        blocks.append([ids[i:i + block_size] for i in range(0, len(ids), block_size)])
    return blocks


def blocks_by_length(per_text: list[list[list[int]]]) -> dict[int, list[tuple[int, list[int]]]]:
    """The blocks of ``text_blocks`` grouped by length (so each group is one tensor), each block with its
    text's index; in text order, then block order, within a group."""
    groups: dict[int, list[tuple[int, list[int]]]] = {}
    for index, blocks in enumerate(per_text):
        for ids in blocks:
            groups.setdefault(len(ids), []).append((index, ids))
    return groups


def check_vocabulary(model: DDLMForDiffusion, tokenizer) -> None:
    """The tokenizer must be the one the model was trained with: exactly its real tokens."""
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model has {model.config.vocab_size}; "
                         "use the tokenizer the model was trained with")


MEMORY_FRACTION = 0.25  # of the available memory, for one model call's working set
CPU_MEMORY_CAP = 512 * 2**20  # bytes: on a CPU one call's working set stays under this, so evaluation fits beside other work


def available_memory(device=None) -> int:
    """Bytes free for tensors on ``device``: torch.cuda.mem_get_info on a GPU; else psutil's available memory
    (if installed) or MemAvailable of /proc/meminfo; 4 GiB where neither can be read."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def default_batch_size(num_states: int, length: int, *, hidden_size: int = 0, num_heads: int = 0, device=None,
                       memory: int | None = None) -> int:
    """Sequences per model call that keep one call's working set within ``MEMORY_FRACTION`` of ``memory`` bytes
    (default ``available_memory(device)``; on a CPU at most ``CPU_MEMORY_CAP``).

    Estimated bytes per sequence: length x (4 float32 copies of the [S] log-scores and the loss's
    temporaries + 16 of the hidden state) + 2 float32 attention maps per head. A rough, deliberately
    generous count; pass an explicit batch_size to override it.
    """
    memory = available_memory(device) if memory is None else memory
    budget = memory * MEMORY_FRACTION
    if torch.device(device or "cpu").type != "cuda":
        budget = min(budget, CPU_MEMORY_CAP)
    per_sequence = length * (16 * num_states + 64 * hidden_size) + 8 * num_heads * length**2
    return max(1, int(budget // per_sequence))


def model_batch_size(model, length: int, device=None, num_states: int | None = None) -> int:
    """``default_batch_size`` for a ``DDLMForDiffusion`` at ``length`` (any other score function: from ``num_states``
    alone, the graph's state count)."""
    config = getattr(model, "config", None)
    num_states = num_states or getattr(config, "vocab_size", 0) + 1
    return default_batch_size(num_states, length, hidden_size=getattr(config, "hidden_size", 0),
                              num_heads=getattr(config, "num_attention_heads", 0), device=device)


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


@contextlib.contextmanager
def loading_progress(enabled: bool):
    """transformers' progress bars ("Loading weights", downloads) left as they are (``enabled``) or turned off for
    the block, the previous setting restored afterwards."""
    import warnings

    from huggingface_hub import utils as hub
    from transformers.utils import logging

    if enabled or not logging.is_progress_bar_enabled():
        yield
        return
    hub_was_disabled = hub.are_progress_bars_disabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():  # the hub warns when HF_HUB_DISABLE_PROGRESS_BARS pins its own setting
            warnings.simplefilter("ignore")
            logging.enable_progress_bar()
            if hub_was_disabled:
                hub.disable_progress_bars()


def load_model(path: str | os.PathLike, *, tokenizer=None, device=None, dtype: torch.dtype | None = None, progress: bool = True):
    """A ``save_pretrained`` directory (or hub id) -> (model in eval mode, tokenizer), diffusion or AR.
    progress=False: no "Loading weights" bar from transformers."""
    with loading_progress(progress):
        model = DDLMForDiffusion.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {}))
    model = model.to(device or "cpu").eval()
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    check_vocabulary(model, tokenizer)
    return model, tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer directory or hub id (never running code it names), or a ValueError naming the directory
    and its tokenizer files."""
    from transformers import AutoTokenizer

    check_local_path("tokenizer", path)
    if looks_like_path(os.fspath(path)):
        path = os.path.expanduser(path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as error:  # missing or corrupt files; the tokenizers library raises bare Exceptions for some
        if not os.path.isdir(path) and isinstance(error, OSError):
            raise  # a hub id: transformers says what is missing (or that the hub cannot be reached)
        files = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(path, name))]
        if not os.path.isdir(path) or not files:
            raise ValueError(f"{path} holds no tokenizer (no {' or '.join(TOKENIZER_FILES[:2])}); pass tokenizer= "
                             "(ddlm CLI: --tokenizer; SEDD models use the GPT-2 tokenizer)") from error
        raise ValueError(f"cannot load the tokenizer saved in {path} ({', '.join(files)}): "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


ESTIMATORS = ("per-text", "dataset", "auto")
DEFAULT_NUM_T = {"per-text": 128, "dataset": 1}  # t per block when num_t is None
DATASET_MIN_BLOCKS = 16  # estimator="auto": the dataset-level estimator for texts of at least this many blocks


def score_texts(model: DDLMForDiffusion, tokenizer, texts: Sequence[str], num_t: int | None = None, *, estimator: str = "per-text",
                batch_size: int | None = None, seed: int | None = None, progress: bool = True, **bound_kwargs) -> list[TextBound]:
    """-log p(text) per text: the likelihood bound of a diffusion model (``DiffusionPipeline.nll_bound``: estimator,
    ``num_t`` t per block, ``bound_kwargs`` to the bound) or the exact value of an AR model."""
    check_count("num_t", num_t, allow_none=True)
    check_count("batch_size", batch_size, allow_none=True)
    if model.config.objective == "ar":
        return ar_text_nll(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    from .pipeline import DiffusionPipeline

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


@dataclass
class ConditionalScore:
    """-log p(continuation | context) in nats: a diffusion model's upper bound with its standard error, or an AR
    model's exact value (stderr 0, num_t 0).

    tokens: the continuation's token count. greedy: AR, whether every continuation token is the
    argmax of the model's next-token distribution (teacher-forced); absorbing diffusion, whether
    every continuation token is the argmax over real tokens of p(x0_i | x_t) with the whole
    continuation masked and the context given (one model call at the sigma_bar whose mask
    probability is the masked fraction of the sequence); None for uniform models, which have no
    masked state to read a prediction from.
    """

    nll: float
    stderr: float
    tokens: int
    greedy: bool | None
    num_t: int

    @property
    def exact(self) -> bool:
        return self.num_t == 0

    @property
    def per_token(self) -> float:
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        """exp(nll / tokens): the (bound on the) perplexity of the continuation."""
        return math.exp(self.per_token)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids (context, continuation) as lm-evaluation-harness splits them, without special tokens.

    Trailing whitespace of the context moves to the front of the continuation; the continuation's
    tokens are those of tokenise(context + continuation) after tokenise(context). Where a token
    merges across the boundary (the whole's tokens do not start with the context's), the
    continuation is tokenised on its own instead, so the context's tokens are always exactly
    tokenise(context) and the scored sequence is their concatenation.
    """
    check_text("context", context)
    check_text("continuation", continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    context_ids, whole = encode(context), encode(context + continuation)
    if whole[:len(context_ids)] == context_ids:
        return context_ids, whole[len(context_ids):]
    return context_ids, encode(continuation)


def encode_pairs(tokenizer, contexts: Sequence[str], continuations: Sequence[str], max_length: int, *,
                 truncate_context: bool = False) -> list[tuple[list[int], list[int]]]:
    """``encode_pair`` of each (context, continuation), checked against the model's ``max_length``.

    A ValueError naming the pair for: an empty continuation; a continuation longer than the model;
    context + continuation longer than the model (unless ``truncate_context``: then the context
    keeps its last tokens, as many as fit).
    """
    if isinstance(contexts, str) or isinstance(continuations, str):
        raise TypeError("contexts and continuations must be lists of strings; wrap a single one in a list")
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; they go in pairs")
    if not isinstance(truncate_context, bool):
        raise ValueError(f"truncate_context must be True or False, got {truncate_context!r}")
    pairs = []
    for index, (context, continuation) in enumerate(zip(contexts, continuations)):
        check_text(f"contexts[{index}]", context)
        if not check_text(f"continuations[{index}]", continuation):
            raise ValueError(f"continuation {index} is empty; nothing to score")
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids:
            raise ValueError(f"continuation {index} ({continuation!r}) tokenises to nothing; nothing to score")
        if len(continuation_ids) > max_length:
            raise ValueError(f"continuation {index} has {len(continuation_ids)} tokens, more than the model's maximum length {max_length}")
        room = max_length - len(continuation_ids)
        if len(context_ids) > room:
            if not truncate_context:
                raise ValueError(f"context {index} ({len(context_ids)} tokens) and its continuation ({len(continuation_ids)}) "
                                 f"need {len(context_ids) + len(continuation_ids)} tokens but the model's maximum length is "
                                 f"{max_length}; shorten the context or truncate it from the left (truncate_context=True, "
                                 "CLI --truncate-context)")
            context_ids = context_ids[len(context_ids) - room:] if room else []
        pairs.append((context_ids, continuation_ids))
    return pairs


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
    groups: dict[int, list[int]] = {}
    for index, (context_ids, continuation_ids) in enumerate(pairs):
        groups.setdefault(len(context_ids) + len(continuation_ids), []).append(index)
    scores: list[ConditionalScore | None] = [None] * len(pairs)
    with tqdm(total=len(pairs), desc="ar conditional", disable=not progress) as bar:
        for length, members in sorted(groups.items()):
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
    from .pipeline import DiffusionPipeline

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
