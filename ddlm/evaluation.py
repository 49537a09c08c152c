"""Scoring text with any ddlm model under one blocking rule, so diffusion and AR numbers share a table.

A text is tokenised without special tokens and cut into blocks of the model's maximum length (the
last one shorter); each block is scored on its own and the blocks' nats are summed. A diffusion
model gives an upper bound on -log p(block) with a Monte Carlo standard error
(``DiffusionPipeline.nll_bound``); an autoregressive model gives the exact -log p(block) by the
chain rule, its first token conditioned on the EOS token that separates documents in training, so
both cover the same tokens.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .checks import check_count
from .data import eos_id
from .losses import ar_nll
from .model import DDLMForDiffusion


@dataclass
class TextBound:
    """-log p of one text in nats: a diffusion model's bound (integral + prior, with a standard error) or an
    AR model's exact value (integral, prior 0, stderr 0, num_t 0)."""

    num_tokens: int
    num_bytes: int
    num_blocks: int
    integral: float
    prior: float
    stderr: float
    num_t: int  # t samples per block; 0 for an exact value

    @property
    def exact(self) -> bool:
        return self.num_t == 0

    @property
    def bound(self) -> float:
        """Upper bound on -log p(text), nats (the exact value for AR models)."""
        return self.integral + self.prior

    @property
    def per_token(self) -> float:
        return self.bound / self.num_tokens

    @property
    def ppl(self) -> float:
        """Perplexity (bound) exp(bound / tokens)."""
        return math.exp(self.per_token)

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
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
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
    for length, members in tqdm(sorted(blocks_by_length(per_text).items()), desc="ar nll", disable=not progress):
        step = batch_size or len(members)
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            nll = ar_nll(model, torch.tensor([ids for _, ids in chunk], device=device), context=context)
            for (index, _), value in zip(chunk, nll.tolist()):
                totals[index] += value
    return [TextBound(sum(map(len, blocks)), len(text.encode()), len(blocks), total, 0.0, 0.0, 0)
            for text, blocks, total in zip(texts, per_text, totals)]


def load_model(path: str | os.PathLike, *, tokenizer=None, device=None, dtype: torch.dtype | None = None):
    """A ``save_pretrained`` directory (or hub id) -> (model in eval mode, tokenizer), diffusion or AR."""
    model = DDLMForDiffusion.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {})).to(device or "cpu").eval()
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    check_vocabulary(model, tokenizer)
    return model, tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer directory or hub id (never running code it names), or a ValueError naming the directory
    and its tokenizer files."""
    from transformers import AutoTokenizer

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


def score_texts(model: DDLMForDiffusion, tokenizer, texts: Sequence[str], num_t: int = 128, *, batch_size: int | None = None,
                seed: int | None = None, progress: bool = True, **bound_kwargs) -> list[TextBound]:
    """-log p(text) per text: the likelihood bound of a diffusion model (``num_t`` t per block, ``bound_kwargs``
    to ``ddlm.likelihood.nll_bound``) or the exact value of an AR model."""
    check_count("num_t", num_t)
    check_count("batch_size", batch_size, allow_none=True)
    if model.config.objective == "ar":
        return ar_text_nll(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    from .pipeline import DiffusionPipeline

    return DiffusionPipeline(model, tokenizer).nll_bound(texts, num_t, batch_size=batch_size, seed=seed, progress=progress, **bound_kwargs)
