"""Sample quality of token sequences: generative perplexity under a reference AR model, unigram entropy
and distinct-n, MAUVE, plus ancestral sampling of an AR model for reference rows.

Generative perplexity alone rewards low-temperature, repetitive samples; the unigram entropy of each
sample exposes them (a degenerate sample repeats a few tokens and has low entropy), and distinct-n
measures repetition across the whole set.

Two references. An AR model trained by ddlm with the samples' tokenizer scores their token ids
directly (``generative_perplexity``). Any other causal LM with its own tokenizer (GPT-2 large is
the field's default) scores the samples as text (``load_reference``, ``reference_perplexity``),
under the rule MDLM and DUO use, written out in ``reference_token_ids`` and ``reference_nll``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.losses import ar_nll
from ..sampling.loop import sample_categorical


def generative_perplexity(reference, samples: torch.Tensor, context: int, batch_size: int | None = None) -> float:
    """exp(mean -log p_ref(token)) of samples Long[B, L] under an AR model (objective='ar') that shares
    their tokenizer; every token is scored, the first conditioned on ``context`` (the EOS id)."""
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must be a non-empty Long[B, L], got shape {list(samples.shape)}")
    step = batch_size or samples.shape[0]
    total = sum(float(ar_nll(reference, chunk, context=context).sum()) for chunk in samples.split(step))
    return math.exp(total / samples.numel())


def unigram_entropies(samples: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each sample's token frequencies: float64 [B] of samples Long[B, L]."""
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must be a non-empty Long[B, L], got shape {list(samples.shape)}")
    entropies = []
    for row in samples:
        counts = torch.unique(row, return_counts=True)[1].double()
        p = counts / counts.sum()
        entropies.append(-(p * p.log()).sum())
    return torch.stack(entropies)


def unigram_entropy(samples: torch.Tensor) -> float:
    """Mean over samples Long[B, L] of the entropy (nats) of each sample's token frequencies."""
    return float(unigram_entropies(samples).mean())


def distinct_n(samples: torch.Tensor, n: int) -> float:
    """Distinct n-grams over all n-grams of samples Long[B, L] (n-grams within a sample; 1 = no repeats)."""
    if samples.dim() != 2 or not 1 <= n <= samples.shape[1]:
        raise ValueError(f"need samples Long[B, L] with 1 <= n <= L, got shape {list(samples.shape)} and n={n}")
    grams = samples.unfold(1, n, 1).reshape(-1, n)
    return torch.unique(grams, dim=0).shape[0] / grams.shape[0]


def sample_metrics(reference, samples: torch.Tensor, context: int, batch_size: int | None = None) -> dict[str, float]:
    """All four metrics of samples Long[B, L]: gen_ppl (under ``reference``), entropy, distinct_2, distinct_4
    (n capped at L for shorter samples)."""
    length = samples.shape[-1]
    return {"gen_ppl": generative_perplexity(reference, samples, context, batch_size), "entropy": unigram_entropy(samples),
            "distinct_2": distinct_n(samples, min(2, length)), "distinct_4": distinct_n(samples, min(4, length))}


@torch.no_grad()
def ar_sample(model, num_samples: int, length: int, context: int, *, temperature: float = 1.0,
              generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Ancestral samples Long[num_samples, length] of an AR model ``x -> log-probs [B, k, N]``, starting
    after the ``context`` token (EOS); the context is not returned."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = torch.full((num_samples, 1), context, dtype=torch.long, device=device)
    for _ in range(length):
        log_probs = model(x)[:, -1].double() / temperature
        weights = torch.exp(log_probs - log_probs.amax(-1, keepdim=True))
        x = torch.cat([x, sample_categorical(weights, generator)[:, None]], 1)
    return x[:, 1:]


# --------------------------------------------------------------------------- any causal LM as the reference


@dataclass
class ReferenceLM:
    """A causal LM that scores text with its own tokenizer: a transformers ``AutoModelForCausalLM`` or an AR
    model trained by ddlm (``ddlm`` true). window: the most tokens one forward may read."""

    model: torch.nn.Module
    tokenizer: object
    window: int
    name: str
    ddlm: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def next_token_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """log p(ids[:, j + 1] | ids[:, :j + 1]) for j < n - 1, float64 [B, n - 1], of token ids Long[B, n].

        Only the picked entries are kept: the [B, n, V] logits are the one large temporary (float32).
        """
        targets = ids[:, 1:, None]
        if self.ddlm:
            return self.model(ids)[:, :-1].gather(-1, targets).squeeze(-1).double()
        logits = self.model(input_ids=ids).logits[:, :-1].float()
        return (logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, -1)).double()

    @torch.no_grad()
    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden state at the last token, [1, hidden] of ids Long[1, n] (MAUVE's text features)."""
        if self.ddlm:
            raise ValueError(f"MAUVE needs a transformers causal LM as the reference (its hidden states are the text features); "
                             f"{self.name} is a ddlm model")
        return self.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, -1].double()


def _context_window(config, tokenizer) -> int:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 1 < value < 10**7:
        return value
    raise ValueError("the reference LM states no context window (config n_positions / max_position_embeddings)")


def load_reference(name: str | os.PathLike, *, device=None, progress: bool = True) -> ReferenceLM:
    """A reference LM for generative perplexity: a directory or hub id of a transformers causal LM with its
    tokenizer (never running code it names), or of an AR model trained by ddlm; a ValueError naming it otherwise.
    progress=False: no "Loading weights" bar."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .scoring import load_model, loading_progress

    hint = "" if os.path.isdir(name) else " (a hub id is downloaded: that needs a network; or pass a local directory)"
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - a missing directory, a bad config, no network: all say the same
        raise ValueError(f"cannot load the reference LM {name}: {type(error).__name__}: {_first_line(error)}{hint}") from None
    if config.model_type == "ddlm":
        model, tokenizer = load_model(name, device=device, progress=progress)
        if model.config.objective != "ar":
            raise ValueError(f"{name} is not an autoregressive model (objective='ar'); the reference must be one")
        return ReferenceLM(model, tokenizer, model.config.max_position_embeddings, str(name), ddlm=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        # weights_only: pickled weights (pytorch_model.bin) are read as tensors only, never as code
        with loading_progress(progress):
            model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=False, weights_only=True)
        model = model.to(device or "cpu").eval()
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot load the reference LM {name} as a causal LM with its tokenizer: "
                         f"{type(error).__name__}: {_first_line(error)}{hint}") from None
    return ReferenceLM(model, tokenizer, _context_window(model.config, tokenizer), str(name))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def sample_pieces(samples: torch.Tensor, tokenizer) -> list[list[str]]:
    """Per sample Long[B, L] of ``tokenizer``'s ids, its text between EOS tokens: k EOS tokens give k + 1 pieces
    (special tokens other than EOS are decoded as their text; ``decode_text``: no character cut in two)."""
    from ..text.tokenization import decode_text

    eos = tokenizer.eos_token_id
    pieces = []
    for row in samples.tolist():
        parts, run = [], []
        for token in row + [None]:
            if token is None or token == eos:
                parts.append(decode_text(tokenizer, run))
                run = []
            else:
                run.append(token)
        pieces.append(parts)
    return pieces


def reference_token_ids(reference: ReferenceLM, pieces: Sequence[Sequence[str]]) -> list[list[int]]:
    """Each sample re-tokenised by the reference: its pieces (``sample_pieces``) each tokenised without special
    tokens, joined by the reference's EOS token (so a sample's EOS stays an EOS whatever its spelling)."""
    eos = reference.tokenizer.eos_token_id
    result = []
    for parts in pieces:
        if len(parts) > 1 and eos is None:
            raise ValueError(f"the samples hold EOS tokens but the reference LM {reference.name}'s tokenizer has no EOS token")
        ids: list[int] = []
        for k, text in enumerate(parts):
            if k:
                ids.append(eos)
            if text:
                ids += list(reference.tokenizer(text, add_special_tokens=False)["input_ids"])
        result.append(ids)
    return result


def scored_targets(ids: Sequence[int], eos: int | None) -> list[bool]:
    """Which tokens of a re-tokenised sample are scored: every token but the first (it has no context; MDLM,
    DUO and SEDD start at the second) and but every EOS after the sample's first EOS."""
    seen_eos, keep = False, []
    for i, token in enumerate(ids):
        is_eos = eos is not None and token == eos
        keep.append(i > 0 and not (is_eos and seen_eos))
        seen_eos |= is_eos
    return keep


REFERENCE_LOGITS_BYTES = 2**30  # default batch of reference_nll: float32 logits of at most 1 GiB per forward


def windows(length: int, window: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index) of the forwards that score a sequence of ``length`` tokens.

    One forward when it fits the reference's window W; else windows of W tokens at a stride of
    W // 2 (the last one shorter), each scoring the tokens the previous ones did not, so every
    token i >= W is predicted from the W // 2 to W - 1 tokens before it (the sliding rule of
    transformers' perplexity guide) and never from outside the window.
    """
    if length <= window:
        return [(0, length, 1)]
    stride, spans, done = max(1, window // 2), [], 1
    for begin in range(0, length, stride):
        end = min(begin + window, length)
        spans.append((begin, end, done))
        done = end
        if end == length:
            break
    return spans


@torch.no_grad()
def reference_nll(reference: ReferenceLM, sequences: Sequence[Sequence[int]], batch_size: int | None = None) -> tuple[list[float], list[int]]:
    """Per re-tokenised sample: -log p of its scored tokens (``scored_targets``) under the reference, nats, and
    their count; long samples in ``windows`` of the reference's length. batch_size: windows per forward
    (default: as many as keep the float32 logits within ``REFERENCE_LOGITS_BYTES``)."""
    eos = reference.tokenizer.eos_token_id
    jobs = []  # (sample, ids of the window, offset of the window, first target index)
    for index, ids in enumerate(sequences):
        for begin, end, first in windows(len(ids), reference.window):
            if end - begin >= 2:
                jobs.append((index, ids[begin:end], begin, first))
    nats, counts = [0.0] * len(sequences), [0] * len(sequences)
    for index, ids in enumerate(sequences):
        counts[index] = sum(scored_targets(ids, eos))
    vocab = getattr(getattr(reference.model, "config", None), "vocab_size", None) or 50_000
    step = batch_size or max(1, REFERENCE_LOGITS_BYTES // (4 * vocab * max([len(ids) for _, ids, _, _ in jobs], default=1)))
    for start in range(0, len(jobs), step):
        chunk = jobs[start:start + step]
        width = max(len(ids) for _, ids, _, _ in chunk)
        batch = torch.zeros(len(chunk), width, dtype=torch.long)  # right padding: a causal model never reads it
        for row, (_, ids, _, _) in enumerate(chunk):
            batch[row, :len(ids)] = torch.tensor(ids)
        picked = reference.next_token_log_probs(batch.to(reference.device)).cpu()
        for row, (index, ids, begin, first) in enumerate(chunk):
            keep = scored_targets(sequences[index], eos)
            for j in range(max(first, begin + 1) - begin, len(ids)):
                if keep[begin + j]:
                    nats[index] -= float(picked[row, j - 1])
    return nats, counts


def reference_perplexity(reference: ReferenceLM, samples: torch.Tensor, tokenizer, batch_size: int | None = None) -> float:
    """Generative perplexity of samples Long[B, L] (ids of ``tokenizer``) under any causal LM: exp(total nats /
    total scored tokens) over all samples, each decoded, re-tokenised and scored by the reference (MDLM's rule)."""
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must be a non-empty Long[B, L], got shape {list(samples.shape)}")
    nats, counts = reference_nll(reference, reference_token_ids(reference, sample_pieces(samples, tokenizer)), batch_size)
    if not sum(counts):
        raise ValueError("the samples re-tokenise to at most one reference token each: nothing to score")
    return math.exp(sum(nats) / sum(counts))


def reference_metrics(reference: ReferenceLM, samples: torch.Tensor, tokenizer, batch_size: int | None = None) -> dict[str, float]:
    """``sample_metrics`` with gen_ppl under any causal LM (``reference_perplexity``); entropy and distinct-n
    of the samples' own token ids."""
    length = samples.shape[-1]
    return {"gen_ppl": reference_perplexity(reference, samples, tokenizer, batch_size), "entropy": unigram_entropy(samples),
            "distinct_2": distinct_n(samples, min(2, length)), "distinct_4": distinct_n(samples, min(4, length))}


def mauve_score(reference: ReferenceLM, texts: Sequence[str], human_text: str, *, seed: int = 25) -> float:
    """MAUVE (Pillutla et al. 2021, the ``mauve-text`` package) between ``texts`` and held-out human text.

    Features: the reference LM's last hidden state at the last token of each text (MAUVE's own
    featurisation, with the reference in place of GPT-2 large). The human text is tokenised by the
    reference and cut into consecutive pieces of the median token length of ``texts`` (at most
    len(texts) pieces; at least 2 needed). Texts longer than the reference's window keep their
    first window of tokens.
    """
    try:
        import mauve
    except ImportError:
        raise ValueError("MAUVE needs the mauve-text package: pip install mauve-text (or pip install 'ddlm[eval]')") from None
    ids = [list(reference.tokenizer(text, add_special_tokens=False)["input_ids"])[:reference.window] for text in texts]
    ids = [piece for piece in ids if piece]
    if len(ids) < 2:
        raise ValueError("MAUVE needs at least 2 non-empty samples")
    size = sorted(map(len, ids))[len(ids) // 2]
    human = list(reference.tokenizer(human_text, add_special_tokens=False)["input_ids"])
    pieces = [human[i:i + size] for i in range(0, len(human) - size + 1, size)][:len(ids)]
    if len(pieces) < 2:
        raise ValueError(f"the held-out text has {len(human)} reference tokens: too few for 2 pieces of {size} (the samples' "
                         "median length); MAUVE needs more held-out text")
    features = [torch.cat([reference.features(torch.tensor([piece], device=reference.device)).cpu() for piece in group]).numpy()
                for group in (ids, pieces)]
    return float(mauve.compute_mauve(p_features=features[0], q_features=features[1], device_id=-1, verbose=False, seed=seed).mauve)
