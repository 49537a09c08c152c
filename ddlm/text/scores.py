"""Records and text handling of -log p estimates, shared by ``ddlm.pipeline`` and ``ddlm.evaluation``.

``TextBound`` and ``ConditionalScore`` (what a score of a text or of a continuation reports), the
blocking rule (``text_blocks``: a text in blocks of the model's maximum length), lm-evaluation-harness's
split of (context, continuation) pairs (``encode_pair``), the estimator names and the default batch
size of one model call. ``ddlm.evaluation`` re-exports every name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.checks import check_text


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
        ids = tokenizer(check_text(f"texts[{index}]", text), add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            raise ValueError(f"text {index} tokenises to nothing; nothing to score")
        blocks.append([ids[i:i + block_size] for i in range(0, len(ids), block_size)])
    return blocks


def check_scorable(model, id_lists: Sequence[Sequence[int]], what: str = "text") -> None:
    """A ValueError naming the first token of ``id_lists`` that the model never produces (an open-weight model's
    special tokens and mask: probability 0, an infinite -log p), so a bound is never silently infinite."""
    drawable = getattr(model, "drawable", None)
    if drawable is None:
        return
    allowed = drawable.tolist()
    for index, ids in enumerate(id_lists):
        for token in ids:
            if not allowed[token]:
                raise ValueError(f"{what} {index} holds token id {token}, which the {model.family} model never produces (a special "
                                 "or mask token: probability 0); its -log p is infinite, so it cannot be scored")


def blocks_by_length(per_text: list[list[list[int]]]) -> dict[int, list[tuple[int, list[int]]]]:
    """The blocks of ``text_blocks`` grouped by length (so each group is one tensor), each block with its
    text's index; in text order, then block order, within a group."""
    groups: dict[int, list[tuple[int, list[int]]]] = {}
    for index, blocks in enumerate(per_text):
        for ids in blocks:
            groups.setdefault(len(ids), []).append((index, ids))
    return groups


def pairs_by_length(pairs: list[tuple[list[int], list[int]]]) -> list[tuple[int, list[int]]]:
    """(total length, indices of the pairs of that length) for encoded (context, continuation) pairs, shortest
    first, so each group is one tensor."""
    groups: dict[int, list[int]] = {}
    for index, (context_ids, continuation_ids) in enumerate(pairs):
        groups.setdefault(len(context_ids) + len(continuation_ids), []).append(index)
    return sorted(groups.items())


ESTIMATORS = ("per-text", "dataset", "auto")
DEFAULT_NUM_T = {"per-text": 128, "dataset": 1}  # t per block when num_t is None
DATASET_MIN_BLOCKS = 16  # estimator="auto": the dataset-level estimator for texts of at least this many blocks


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
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []

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

