"""``DiffusionPipeline``: generate, infill and score text with a ratio network and a tokenizer."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
import os
import re
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count, check_text, is_int
from ..core.manifest import write_model_manifest
from ..core.processes import Graph, check_token_ids
from ..core.score import ScoreFn, accepts_positions, evaluate_score, row_index
from ..likelihood.bounds import block_estimates, conditional_nll_bound, nll_bound
from ..models import DDLMForDiffusion
from ..sampling.guidance import check_scale, guided_model_score
from ..sampling.loop import sample
from ..sampling.score_cache import is_time_independent
from .loading import load_model
from .scores import (DATASET_MIN_BLOCKS, DEFAULT_NUM_T, ESTIMATORS, ConditionalScore, TextBound, blocks_by_length, encode_pairs,
                     model_batch_size, text_blocks)
from .tokenization import decode_text

GAP = re.compile(r"\{\{\s*([-+]?[\d.]+(?:\s*\.\.\s*[-+]?[\d.]+)?)\s*\}\}")  # {{n}} or {{lo..hi}}; signs and points are caught to be refused
MASK_TEXT = "[MASK]"  # how a still-masked position reads when sampling ends without denoising
BLOCKS_PER_BOUND = 64  # nll_bound, per-text estimator: blocks bounded together (one progress step; fixed, so results do not depend on batch_size)
MAX_LENGTH_COMBINATIONS = 64  # unknown-length infill: at most this many combinations of gap lengths are tried

Template = str | Sequence[str | int | range]


def _gap_count(text: str, gap: str) -> int:
    """One count of a gap: a ValueError for anything but a plain int (too long ones are refused later)."""
    if not text.isdecimal():
        raise ValueError(f"a gap {{{{{gap}}}}} must hold a positive int number of tokens (or a range lo..hi of them)")
    if len(text.lstrip("0")) > 1000:  # int() refuses over 4300 digits; no model is this long
        raise ValueError(f"a gap of a {len(text.lstrip('0'))}-digit number of tokens exceeds any model's maximum length")
    return int(text)


def _gap_length(text: str) -> int | range:
    """The token count of a ``{{n}}`` gap, or the candidate counts ``range(lo, hi + 1)`` of a ``{{lo..hi}}`` gap."""
    text = re.sub(r"\s+", "", text)
    if ".." not in text:
        return _gap_count(text, text)
    low, _, high = text.partition("..")
    return range(_gap_count(low, text), _gap_count(high, text) + 1)


def _gap_name(segment: range) -> str:
    return f"{{{{{segment.start}..{segment.stop - 1}}}}}"


def _token_list(ids, graph: Graph) -> list[int]:
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


class _MaskedFuture:
    """The score function of a window followed by ``pad`` positions still to come, held at the mask.

    Called on x_t Long[B, n] it scores the length-(n + pad) sequence whose last ``pad`` tokens are
    the mask and returns the rows of the first n (row-restricted positions are translated), so a
    sampler never sees or moves the future. A masked position carries no information in an
    absorbing process, so this is the model's law of the window with the future marginalised.
    """

    accepts_positions = True

    def __init__(self, score_fn: ScoreFn, mask_id: int, pad: int):
        self.score_fn, self.mask_id, self.pad = score_fn, mask_id, pad
        self.time_independent = is_time_independent(score_fn)

    def __call__(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if not self.pad:
            return evaluate_score(self.score_fn, x_t, sigma_bar, self.mask_id + 1, positions=positions)
        batch, n = x_t.shape
        padded = torch.cat([x_t, x_t.new_full((batch, self.pad), self.mask_id)], 1)
        if positions is None:
            return evaluate_score(self.score_fn, padded, sigma_bar, self.mask_id + 1)[:, :n]
        index = row_index(positions, x_t.shape)
        index = index // n * (n + self.pad) + index % n
        return evaluate_score(self.score_fn, padded, sigma_bar, self.mask_id + 1, positions=index)


@dataclasses.dataclass
class InfillCandidate:
    """One combination of gap lengths tried by ``DiffusionPipeline.infill``: its fills and their likelihood bound.

    bound: the mean over the fills of the upper bound on -log p(filled token sequence), nats;
    stderr: its Monte Carlo standard error; per_token / per_token_stderr: both divided by the
    sequence's token count (given + filled), the value candidates are compared by.
    """

    lengths: tuple[int, ...]
    texts: list[str]
    num_tokens: int
    bound: float
    stderr: float
    num_t: int

    @property
    def per_token(self) -> float:
        return self.bound / self.num_tokens

    @property
    def per_token_stderr(self) -> float:
        return self.stderr / self.num_tokens


class DiffusionPipeline:
    """A score network plus a tokenizer: ``generate``, ``infill`` and ``nll_bound`` on strings.

    model: a ``DDLMForDiffusion`` (graph, noise and maximum length come from its config) or any
    ``score_fn(x_t Long[B, L], sigma_bar [B]) -> log-scores [B, L, S]`` with ``graph``, ``noise``
    and ``max_length`` given. The tokenizer must have exactly the graph's N real tokens.
    """

    def __init__(self, model: ScoreFn, tokenizer, *, graph: Graph | None = None, noise=None, max_length: int | None = None, device=None):
        config = getattr(model, "config", None)
        if getattr(config, "objective", "diffusion") != "diffusion":
            raise ValueError("an autoregressive model (objective='ar') has no reverse process; score it with ddlm.evaluation.score_texts")
        self.graph = graph or getattr(model, "graph", None)
        self.noise = noise or getattr(model, "noise", None)
        check_count("max_length", max_length, allow_none=True)
        self.max_length = max_length or getattr(config, "max_position_embeddings", None)
        if self.graph is None or self.noise is None or self.max_length is None:
            raise ValueError("a model without a DDLMConfig needs graph=, noise= and max_length=")
        if len(tokenizer) != self.graph.num_tokens:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's {self.graph!r} has {self.graph.num_tokens} real tokens; "
                "use the tokenizer the model was trained with")
        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval() if device is not None else model.eval()
            device = next(model.parameters()).device
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device or "cpu")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, tokenizer=None, device=None, dtype: torch.dtype | None = None,
                        progress: bool = True) -> "DiffusionPipeline":
        """Load a ``save_pretrained`` directory (or hub id): the model, and its tokenizer unless one is given
        (progress=False: no "Loading weights" bar)."""
        model, tokenizer = load_model(path, tokenizer=tokenizer, device=device, dtype=dtype, progress=progress)
        return cls(model, tokenizer, device=device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model (safetensors + config), the tokenizer and a manifest of their files into one directory."""
        if not isinstance(self.model, DDLMForDiffusion):
            raise TypeError("only a DDLMForDiffusion model can be saved")
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        write_model_manifest(path)  # the size and SHA-256 of every file, checked when the directory is loaded

    @torch.inference_mode()
    def score_fn(self, x_t: torch.Tensor, sigma_bar: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The model's log-scores [B, L, S] without autograd; with ``positions`` only those rows, [R, S]
        (the row-restricted protocol of ``ddlm.score``: a model that accepts positions runs its head
        on those rows only, any other model's full output is gathered)."""
        if positions is None:
            return self.model(x_t, sigma_bar)
        if accepts_positions(self.model):
            return self.model(x_t, sigma_bar, positions=positions)
        return self.model(x_t, sigma_bar).flatten(0, 1)[row_index(positions, x_t.shape)]

    score_fn.accepts_positions = True

    def sampling_score_fn(self, label: int | None = None, guidance_scale: float = 1.0) -> ScoreFn:
        """``score_fn`` carrying the model's ``time_independent`` declaration (``ddlm.score_cache``) for samplers.

        label: a class id of a class-conditional model (``config.num_classes`` > 0) to guide towards, with
        classifier-free guidance of scale ``guidance_scale`` (``ddlm.guidance.guided_model_score``: 1 the
        conditional model, 0 the unconditional one, > 1 stronger guidance; exact only at 0 and 1). None: the
        model as it is (a class-conditional model then runs its null class, i.e. unconditionally).
        """
        scale = check_scale(guidance_scale, "guidance_scale")
        if label is not None:
            if not is_int(label, 0):
                raise ValueError(f"label must be an int class id >= 0, got {label!r:.80}")
            return guided_model_score(self.model, label, scale)
        if scale != 1:
            raise ValueError(f"guidance_scale={guidance_scale!r} needs label= (the class to guide towards)")
        fn = functools.partial(self.score_fn)
        fn.accepts_positions = True
        fn.time_independent = is_time_independent(self.model)
        return fn

    def _generator(self, generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
        if generator is not None and seed is not None:
            raise ValueError("pass generator= or seed=, not both")
        return torch.Generator(self.device).manual_seed(seed) if seed is not None else generator

    def sample(
        self,
        num_samples: int,
        length: int,
        steps: int = 128,
        predictor: str = "analytic",
        *,
        x_init: torch.Tensor | None = None,
        fixed: torch.Tensor | None = None,
        denoise: bool = True,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool = True,
        stats: dict | None = None,
        label: int | None = None,
        guidance_scale: float = 1.0,
        **sampler_options,
    ) -> torch.Tensor:
        """Token ids Long[num_samples, length]; x_init / fixed: Long/Bool[length] clamped positions (or None).

        Batches of ``batch_size`` samples (default all) run ``ddlm.sampling.sample`` one after
        another with the same generator. predictor: any of ``ddlm.sampling.PREDICTORS``
        ("first_hitting" for absorbing models; it ignores ``steps``). stats: a dict that
        receives ``network_calls``, ``sequences_scored`` and ``positions_scored`` summed over the batches.
        sampler_options: any other keyword of ``ddlm.sampling.sample``, passed to it as is: cache
        (None: on for time-independent models), dtype, impl, and the following.
        Decoding strategies of absorbing models (``ddlm.decoding``):
        temperature / top_k / top_p reshape the token a masked position unmasks to; predictor
        "confidence" with confidence / unmask_schedule / threshold / entropy_bound unmasks the most
        confident positions in parallel. Neither samples the model's distribution exactly.
        Correctors (``ddlm.correctors``): remask (eta in [0, 1],
        absorbing) / remask_window remask unmasked tokens before each step with exact marginals and no
        extra network call; corrector_steps / corrector_size add p_t-invariant corrector steps after
        each predictor step (any model; one network call each).
        label / guidance_scale: class-conditional models, classifier-free guidance towards class ``label``
        (``sampling_score_fn``; one network call of a doubled batch per step unless the scale is 0 or 1).
        """
        check_count("num_samples", num_samples)
        check_count("length", length)
        if length > self.max_length:
            raise ValueError(f"length {length} exceeds the model's maximum length {self.max_length}")
        check_count("steps", steps)
        check_count("batch_size", batch_size, allow_none=True)
        generator = self._generator(generator, seed)
        batch_size = batch_size or num_samples
        batches = []
        score_fn = self.sampling_score_fn(label, guidance_scale)
        totals = {"network_calls": 0, "sequences_scored": 0, "positions_scored": 0}
        for start in tqdm(range(0, num_samples, batch_size), desc="batches", disable=not progress or batch_size >= num_samples):
            n = min(batch_size, num_samples - start)
            batch_stats = {}
            batches.append(sample(
                score_fn, self.graph, self.noise, (n, length), steps, predictor, denoise, generator,
                x_init=None if x_init is None else x_init.to(self.device).expand(n, length),
                fixed=None if fixed is None else fixed.to(self.device).expand(n, length),
                device=self.device, progress=progress, stats=batch_stats, **sampler_options))
            for key in totals:
                totals[key] += batch_stats[key]
            totals["cache"] = batch_stats["cache"]
        if stats is not None:
            stats.update(totals)
        return torch.cat(batches)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids; mask ids (absorbing, undenoised) read as ``[MASK]``. A character that the ids
        (or the run before a mask) cut in two is left out instead of shown as U+FFFD (``decode_text``).
        ids: a 1-D integer tensor or a sequence of ints in [0, num_states); others are a TypeError / ValueError."""
        ids = _token_list(ids, self.graph)
        pieces, run = [], []
        for token in ids + [None]:
            if token is not None and token < self.graph.num_tokens:
                run.append(token)
                continue
            if run:
                pieces.append(decode_text(self.tokenizer, run))
                run = []
            if token is not None:
                pieces.append(MASK_TEXT)
        return "".join(pieces)

    def generate(
        self,
        num_samples: int = 1,
        length: int | None = None,
        steps: int = 128,
        predictor: str = "analytic",
        *,
        prompt: str | None = None,
        block_size: int | None = None,
        max_new_tokens: int | None = None,
        stop_at_eos: bool = False,
        **kwargs,
    ) -> list[str]:
        """Samples as text; length in tokens (default the model's maximum).

        Keyword arguments as in ``sample`` (denoise, batch_size, generator, seed, dtype, progress; label and
        guidance_scale for classifier-free guidance of a class-conditional model).

        Semi-autoregressive block decoding (absorbing models) when any of ``prompt``,
        ``block_size``, ``max_new_tokens`` or ``stop_at_eos`` is given: ``max_new_tokens`` (default
        ``length``, else the model's maximum) new tokens are generated in blocks of ``block_size``
        left to right after the optional ``prompt`` (see ``sample_blocks``). block_size defaults to
        all new tokens in one block when prompt and new tokens fit the model's length, else half
        the model's length. Each text is the prompt (byte-identical) followed by the new tokens;
        with ``stop_at_eos`` it is cut at the first EOS token (the EOS itself is not in the text).
        """
        if prompt is None and block_size is None and max_new_tokens is None and stop_at_eos is False:
            ids = self.sample(num_samples, self.max_length if length is None else length, steps, predictor, **kwargs)
            return [self.decode(row) for row in ids.cpu()]
        if length is not None and max_new_tokens is not None:
            raise ValueError("pass length= or max_new_tokens= (the same thing for block decoding), not both")
        if max_new_tokens is None:
            max_new_tokens = self.max_length if length is None else length
        if prompt is not None:
            check_text("prompt", prompt)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if block_size is None and isinstance(max_new_tokens, int):
            block_size = max_new_tokens if len(prompt_ids) + max_new_tokens <= self.max_length else max(1, self.max_length // 2)
        rows = self.sample_blocks(num_samples, max_new_tokens, block_size, steps, predictor, prompt_ids=prompt_ids,
                                  stop_at_eos=stop_at_eos, **kwargs)
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in rows:
            if stop_at_eos and len(row) and int(row[-1]) == eos:
                row = row[:-1]
            texts.append((prompt or "") + self.decode(row))
        return texts

    def sample_blocks(
        self,
        num_samples: int,
        max_new_tokens: int,
        block_size: int,
        steps: int = 128,
        predictor: str = "analytic",
        *,
        prompt_ids: Sequence[int] | torch.Tensor | None = None,
        stop_at_eos: bool = False,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool = True,
        stats: dict | None = None,
        label: int | None = None,
        guidance_scale: float = 1.0,
        **sample_kwargs,
    ) -> list[torch.Tensor]:
        """Semi-autoregressive block decoding (absorbing models): per sample the new token ids Long[n].

        Blocks of ``block_size`` tokens (the last one shorter if it does not divide
        ``max_new_tokens``) are generated left to right after ``prompt_ids``. Each block is one run
        of ``ddlm.sampling.sample`` (``steps``, ``predictor``) on a window whose finished prefix is
        clamped (``x_init`` / ``fixed``) and whose new block starts masked.

        Within the context (prompt + new tokens <= the model's length W) the window is the finished
        prefix and the block, followed by the positions still to come held at the mask: the
        score function is called on the full ``min(W, prompt + max_new_tokens)`` positions, with
        those future ones masked and never sampled. For an absorbing process a masked position
        carries no information, so with exact ratios each block is drawn exactly from the
        model's conditional given the prefix with the future marginalised, and the blocks
        together from the model's joint law at that length: block decoding equals plain sampling
        in law (block_size = max_new_tokens without a prompt is the same call, draw for draw).

        Beyond the context (prefix + block > W) the window slides: the model sees the last
        ``W - block_size`` finished tokens as clamped context plus the new block. This is an
        approximation: tokens older than the window are forgotten, and the model's law at
        length W is used as if the window were a sequence start.

        stop_at_eos: a sample stops after the block in which the tokenizer's EOS token first
        appears among its new tokens, and its ids are cut right after that EOS (the others go on;
        generation ends when every sample stopped or ``max_new_tokens`` are made). Time-independent
        models reuse the clamped prefix through the sampler's exact cache (``cache``: see
        ``ddlm.sampling.sample``). stats: a dict receiving ``network_calls``, ``sequences_scored``, ``positions_scored``
        and ``blocks`` summed over blocks and batches. Other keyword arguments go to
        ``ddlm.sampling.sample`` (dtype, cache, impl, t_min, ...); ``denoise`` must stay True
        (a clamped prefix must be clean tokens). label / guidance_scale: classifier-free guidance of a
        class-conditional model, as in ``sample``.

        Uniform models are refused: their noised tokens are never "unknown", so there is no way to
        hold the future out of the window, and clamping a clean prefix is itself only approximate
        for them (the network never saw clean tokens beside noised ones); use ``infill`` there.
        """
        if self.graph.mask_id is None:
            raise ValueError(f"block_size: block decoding (prompt=, block_size=, max_new_tokens=, stop_at_eos=) needs an absorbing "
                             f"model, got {self.graph!r}: a uniform process has no masked state to hold the future out and "
                             "clamping is not exact for it; use infill([prompt, n]) for a prompt that fits the model's length")
        check_count("max_new_tokens", max_new_tokens)
        if not (is_int(block_size, 1) and block_size <= self.max_length):
            raise ValueError(f"block_size must be an int in [1, {self.max_length}] (the model's maximum length), got {block_size!r}")
        check_count("num_samples", num_samples)
        check_count("steps", steps)
        check_count("batch_size", batch_size, allow_none=True)
        if stop_at_eos not in (True, False):
            raise ValueError(f"stop_at_eos must be True or False, got {stop_at_eos!r}")
        if sample_kwargs.get("denoise", True) is not True:
            raise ValueError("denoise must be True for block decoding: each finished block is clamped as clean tokens")
        sample_kwargs.pop("denoise", None)
        for name in ("x_init", "fixed", "shape"):
            if name in sample_kwargs:
                raise ValueError(f"{name}= is set by block decoding itself (the finished prefix); pass prompt_ids instead")
        eos = self.tokenizer.eos_token_id
        if stop_at_eos and eos is None:
            raise ValueError("stop_at_eos needs a tokenizer with an EOS token (tokenizer.eos_token_id is None)")
        prompt = torch.as_tensor([] if prompt_ids is None else prompt_ids, dtype=torch.long).reshape(-1).to(self.device)
        if prompt.numel():
            self.graph.check_clean(prompt, "prompt_ids")
        generator = self._generator(generator, seed)
        width, start = self.max_length, prompt.numel()
        target = min(width, start + max_new_tokens)  # the window length within the context
        seqs = prompt.expand(num_samples, start).clone()
        done = torch.zeros(num_samples, dtype=torch.bool, device=self.device)
        base_fn = self.sampling_score_fn(label, guidance_scale)
        totals = {"network_calls": 0, "sequences_scored": 0, "positions_scored": 0, "blocks": 0}
        blocks = range(0, max_new_tokens, block_size)
        for made in tqdm(blocks, desc="blocks", disable=not progress or len(blocks) == 1):
            size = min(block_size, max_new_tokens - made)
            context = min(seqs.shape[1], width - size)
            length = context + size
            score_fn = _MaskedFuture(base_fn, self.graph.mask_id, target - length)
            active = (~done).nonzero().squeeze(1)
            x_init = torch.cat([seqs[active, seqs.shape[1] - context:], seqs.new_zeros(len(active), size)], 1)
            fixed = torch.zeros(length, dtype=torch.bool, device=self.device)
            fixed[:context] = True
            new = seqs.new_full((num_samples, size), eos if eos is not None else 0)
            step = batch_size or len(active)
            for first in range(0, len(active), step):
                rows = slice(first, first + step)
                n = len(active[rows])
                batch_stats = {}
                out = sample(score_fn, self.graph, self.noise, (n, length), steps, predictor, True, generator,
                             x_init=x_init[rows], fixed=fixed.expand(n, length), device=self.device, progress=False,
                             stats=batch_stats, **sample_kwargs)
                new[active[rows]] = out[:, context:]
                for key in ("network_calls", "sequences_scored", "positions_scored"):
                    totals[key] += batch_stats[key]
                totals["cache"] = batch_stats["cache"]
            totals["blocks"] += 1
            seqs = torch.cat([seqs, new], 1)
            if stop_at_eos:
                done |= (new == eos).any(1)
                if bool(done.all()):
                    break
        if stats is not None:
            stats.update(totals)
        results = []
        for row in seqs[:, start:].cpu():
            if stop_at_eos:
                hits = (row == eos).nonzero()
                if len(hits):
                    row = row[: int(hits[0]) + 1]
            results.append(row)
        return results

    def parse_template(self, template: Template) -> list[str | int | range]:
        """Segments of a template: given text (str) and gaps (int: exactly that many tokens to generate;
        range: a gap of unknown length, each count in the range a candidate, see ``infill``).

        A string template marks gaps as ``{{n}}`` or ``{{lo..hi}}`` (lo to hi tokens, both included);
        a list mixes strings, ints and ``range(lo, hi + 1)`` objects. A range of one count is that int.
        """
        if isinstance(template, str):
            parts = GAP.split(check_text("template", template))
            segments = [_gap_length(part) if i % 2 else part for i, part in enumerate(parts)]
        elif isinstance(template, Sequence):
            segments = list(template)
        else:
            raise TypeError(f"a template is a str with {{{{n}}}} gaps or a list of str and int, got {type(template).__name__}")
        gap_index = 0
        for k, segment in enumerate(segments):
            if isinstance(segment, bool) or not isinstance(segment, (str, int, range)):
                raise TypeError(f"template segments must be str (given text), int (gap length) or range (candidate gap "
                                f"lengths), got {segment!r}")
            if isinstance(segment, str):
                check_text(f"template[{k}]", segment)
                continue
            gap_index += 1
            if isinstance(segment, int):
                if segment < 1:
                    raise ValueError(f"a gap must have at least 1 token, got {segment}")
                if segment > self.max_length:
                    raise ValueError(f"a gap of {segment} tokens exceeds the model's maximum length {self.max_length}")
                continue
            allowed = f"allowed: 1 <= min <= max <= {self.max_length} (the model's maximum length)"
            if segment.step != 1:
                raise ValueError(f"gap {gap_index} {segment!r}: a range of gap lengths must have step 1; {allowed}")
            low, high = segment.start, segment.stop - 1
            if low > high:
                raise ValueError(f"gap {gap_index} {_gap_name(segment)}: min {low} > max {high}; {allowed}")
            if low < 1:
                raise ValueError(f"gap {gap_index} {_gap_name(segment)}: min {low} < 1; {allowed}")
            if high > self.max_length:
                raise ValueError(f"gap {gap_index} {_gap_name(segment)}: max {high} exceeds the model's maximum length; {allowed}")
            if low == high:
                segments[k] = low
        gaps = sum(segment if isinstance(segment, int) else segment.start for segment in segments if not isinstance(segment, str))
        if not gaps:
            raise ValueError("the template has no gap: mark one as {{n}} (n tokens) or pass an int in a list")
        if gaps > self.max_length:
            raise ValueError(f"the template's gaps need {gaps} tokens but the model's maximum length is {self.max_length}")
        return [segment for segment in segments if segment != ""]

    def gap_length_candidates(self, template: Template) -> list[tuple[int, ...]]:
        """Every combination of gap lengths a template allows (one int per gap, in order), checked to fit.

        A fixed gap contributes its length; a ``{{lo..hi}}`` gap each count from lo to hi. Each gap's
        maximum must fit beside the given text and the other gaps' minimums (ValueError naming the gap and
        the counts allowed), and there may be at most ``MAX_LENGTH_COMBINATIONS`` (64) combinations.
        """
        segments = self.parse_template(template)
        given = sum(len(self.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in segments if isinstance(s, str))
        gaps = [range(s, s + 1) if isinstance(s, int) else s for s in segments if not isinstance(s, str)]
        minimum = given + sum(g.start for g in gaps)
        if minimum > self.max_length:
            raise ValueError(f"the template needs at least {minimum} tokens ({given} given, {minimum - given} in gaps at their "
                             f"minimum lengths) but the model's maximum length is {self.max_length}")
        for index, gap in enumerate(gaps, 1):
            room = self.max_length - (minimum - gap.start)
            if len(gap) > 1 and gap.stop - 1 > room:
                raise ValueError(f"gap {index} {_gap_name(gap)}: max {gap.stop - 1} does not fit: beside {given} given tokens and "
                                 f"the other gaps' minimums the model's maximum length {self.max_length} leaves room for "
                                 f"{room}; allowed: 1 <= min <= max <= {room}")
        count = math.prod(len(g) for g in gaps)
        if count > MAX_LENGTH_COMBINATIONS:
            raise ValueError(f"the template's gap ranges make {count} combinations of lengths "
                             f"({' x '.join(str(len(g)) for g in gaps)}); at most {MAX_LENGTH_COMBINATIONS} are tried: narrow the ranges")
        return list(itertools.product(*gaps))

    def encode_template(self, template: Template) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str | None, int]]]:
        """Token ids Long[L] (gaps hold 0), the given positions Bool[L], and the spans in order:
        (given text, its token count) or (None, gap length)."""
        spans, ids, given = [], [], []
        for segment in self.parse_template(template):
            if isinstance(segment, range):
                raise ValueError(f"gap {_gap_name(segment)} has an unknown length: infill tries every length (infill), or "
                                 "give one length per gap (gap_length_candidates lists the combinations)")
            given_text = isinstance(segment, str)
            tokens = self.tokenizer(segment, add_special_tokens=False)["input_ids"] if given_text else [0] * segment
            spans.append((segment if given_text else None, len(tokens)))
            ids += tokens
            given += [given_text] * len(tokens)
        if len(ids) > self.max_length:
            gaps = sum(n for text, n in spans if text is None)
            raise ValueError(f"the template needs {len(ids)} tokens ({len(ids) - gaps} given, {gaps} in gaps) "
                             f"but the model's maximum length is {self.max_length}")
        return torch.tensor(ids, dtype=torch.long), torch.tensor(given, dtype=torch.bool), spans

    def _fill(self, template: Template, num_samples: int, steps: int, predictor: str, **kwargs) -> tuple[list[str], torch.Tensor]:
        """Texts of ``num_samples`` fills of a template with fixed gap lengths, and their token ids Long[num_samples, L]."""
        ids, given, spans = self.encode_template(template)
        samples = self.sample(num_samples, len(ids), steps, predictor, x_init=ids, fixed=given, **kwargs).cpu()
        texts = []
        for row in samples:
            pieces, position = [], 0
            for text, n in spans:
                pieces.append(text if text is not None else self.decode(row[position:position + n]))
                position += n
            texts.append("".join(pieces))
        return texts, samples

    def infill(
        self,
        template: Template,
        num_samples: int = 1,
        steps: int = 128,
        predictor: str = "analytic",
        *,
        num_t: int = 64,
        return_candidates: bool = False,
        **kwargs,
    ) -> list[str] | tuple[list[str], list[InfillCandidate]]:
        """Fill every gap of ``template``; returns ``num_samples`` texts.

        The given text comes back byte-identical (it is copied, not re-decoded); gap tokens are
        sampled conditionally on it by clamping (exact for absorbing models, approximate for
        uniform ones). Prefix prompting is ``["prompt", n]``, suffix prompting ``[n, "ending"]``.
        Keyword arguments as in ``sample``.

        Gaps of unknown length. A gap ``{{lo..hi}}`` (or ``range(lo, hi + 1)`` in a list) has
        candidate lengths lo..hi; with several such gaps every combination is a candidate (at most
        64, ``gap_length_candidates``). Each candidate is filled ``num_samples`` times and each
        filled token sequence (given tokens and fill, as the model saw it) is scored with the
        likelihood bound (``ddlm.likelihood.nll_bound``, ``num_t`` times, the same generator). The
        candidates are compared by the bound on -log p of the *whole* filled sequence divided by
        its number of tokens (mean over the candidate's fills), and the lowest wins: its
        ``num_samples`` texts are returned. Why per token of the whole sequence: a diffusion model
        is a separate distribution for each sequence length, and a longer gap adds tokens, so the
        total -log p grows with the gap (totals pick the shortest gap almost always); dividing by
        the filled tokens only would leave the given text's cost in the numerator and favour long
        gaps. The per-token rate of the whole sequence (what perplexity reports) compares the
        candidates on the same footing. It is a comparison of *upper bounds*: exact only where the
        bound is tight (exact ratios with the exact terminal marginal), otherwise a candidate with
        a looser bound can lose to a worse one; each value carries its Monte Carlo standard error,
        and differences within a few of them are not resolved (raise ``num_t``).

        return_candidates: also return the per-candidate report, a list of ``InfillCandidate``
        (lengths, texts, tokens, bound per token +- standard error), in combination order:
        ``texts, candidates = pipe.infill(..., return_candidates=True)``. A template without ranges
        is then one scored candidate.
        """
        check_count("num_t", num_t)
        if not isinstance(return_candidates, bool):
            raise ValueError(f"return_candidates must be True or False, got {return_candidates!r}")
        segments = self.parse_template(template)
        if not return_candidates and not any(isinstance(s, range) for s in segments):
            return self._fill(segments, num_samples, steps, predictor, **kwargs)[0]
        check_count("num_samples", num_samples)
        generator = self._generator(kwargs.pop("generator", None), kwargs.pop("seed", None))
        progress = kwargs.get("progress", True)
        candidates = []
        for lengths in tqdm(self.gap_length_candidates(segments), desc="gap lengths", disable=not progress):
            lengths_left = iter(lengths)
            concrete = [s if isinstance(s, str) else next(lengths_left) for s in segments]
            texts, ids = self._fill(concrete, num_samples, steps, predictor, generator=generator, **kwargs)
            bound = nll_bound(self.score_fn, self.graph, self.noise, ids.to(self.device), num_t, generator,
                              batch_size=kwargs.get("batch_size"))
            total = (bound.integral + bound.prior).double().cpu()
            stderr = float(bound.stderr.double().square().sum().sqrt()) / num_samples
            candidates.append(InfillCandidate(tuple(lengths), texts, ids.shape[1], float(total.mean()), stderr, num_t))
        best = min(candidates, key=lambda c: c.per_token)
        return (best.texts, candidates) if return_candidates else best.texts

    def nll_bound(
        self,
        texts: Sequence[str],
        num_t: int | None = None,
        *,
        estimator: str = "per-text",
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool = True,
        **bound_kwargs,
    ) -> list[TextBound]:
        """An upper bound on -log p(text) with its standard error, per text.

        Texts are tokenised without special tokens and cut into blocks of the model's maximum
        length (the last one shorter); blocks are bounded independently and their bounds summed.
        estimator: "per-text" (``ddlm.likelihood.nll_bound``: num_t times for every block, default
        128, a standard error per block); "dataset" (``ddlm.likelihood.block_estimates``: num_t
        times per block, default 1, stratified over all of a text's blocks, the standard error
        from the strata: needs at least 2 blocks per text); "auto": "dataset" for a text
        of at least ``DATASET_MIN_BLOCKS`` (16) blocks, "per-text" otherwise. Model calls per
        token: num_t / block length either way, so the dataset estimator at its default costs
        1/128 of the per-text one. batch_size: sequences per model call (default
        ``ddlm.text_scores.default_batch_size``: bounded by the available memory); other keyword
        arguments go to the bound (t_sampling, t_power, base). The progress bar counts blocks.
        """
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        check_count("num_t", num_t, allow_none=True)
        check_count("batch_size", batch_size, allow_none=True)
        generator = self._generator(generator, seed)
        per_text = text_blocks(self.tokenizer, texts, self.max_length)
        chosen = [estimator if estimator != "auto" else "dataset" if len(blocks) >= DATASET_MIN_BLOCKS else "per-text" for blocks in per_text]
        for index, (kind, blocks) in enumerate(zip(chosen, per_text)):
            if kind == "dataset" and len(blocks) < 2:
                raise ValueError(f"text {index} is one block; the dataset estimator takes its standard error across blocks "
                                 "and needs at least 2: use estimator='per-text' (or 'auto')")
        bounds: list[TextBound | None] = [None] * len(texts)
        total_blocks = sum(len(blocks) for kind, blocks in zip(chosen, per_text) if kind == "per-text")
        with tqdm(total=total_blocks, desc="nll bound (per-text)", unit="block", disable=not progress or not total_blocks) as bar:
            self._per_text_bounds(texts, per_text, chosen, bounds, num_t or DEFAULT_NUM_T["per-text"], batch_size, generator, bar,
                                  bound_kwargs)
        for index, (text, kind, blocks) in enumerate(zip(texts, chosen, per_text)):
            if kind != "dataset":
                continue
            t_per_block = num_t or DEFAULT_NUM_T["dataset"]
            ids = [torch.tensor(block, device=self.device) for block in blocks]
            estimates = block_estimates(self.score_fn, self.graph, self.noise, ids, t_per_block, generator,
                                        batch_size=batch_size or model_batch_size(self.model, self.max_length, self.device, self.graph.num_states),
                                        progress=progress, **bound_kwargs)
            total, stderr = estimates.total()
            integral = float(estimates.integral.sum())
            bounds[index] = TextBound(sum(map(len, blocks)), len(text.encode()), len(blocks), integral, total - integral, stderr,
                                      t_per_block, "dataset", t_per_block * len(blocks))
        return bounds

    def _per_text_bounds(self, texts, per_text, chosen, bounds, num_t, batch_size, generator, bar, bound_kwargs) -> None:
        """Fill ``bounds`` for the texts whose estimator is "per-text": each length's blocks in groups of
        ``BLOCKS_PER_BOUND`` (the progress bar's step), model calls of ``batch_size`` sequences (default:
        memory-bounded). The groups do not depend on ``batch_size``, so neither do the draws: same seed, same bound."""
        selected = [blocks if kind == "per-text" else [] for kind, blocks in zip(chosen, per_text)]
        parts = [[] for _ in texts]  # per text, per block: (integral, prior, stderr, tokens)
        for length, members in sorted(blocks_by_length(selected).items()):
            step = batch_size or model_batch_size(self.model, length, self.device, self.graph.num_states)
            for start in range(0, len(members), BLOCKS_PER_BOUND):
                chunk = members[start:start + BLOCKS_PER_BOUND]
                x0 = torch.tensor([ids for _, ids in chunk], device=self.device)
                result = nll_bound(self.score_fn, self.graph, self.noise, x0, num_t, generator, batch_size=step, **bound_kwargs)
                for row, (index, _) in enumerate(chunk):
                    parts[index].append((float(result.integral[row]), float(result.prior[row]), float(result.stderr[row]), length))
                bar.update(len(chunk))
        for index, (text, text_parts) in enumerate(zip(texts, parts)):
            if not text_parts:
                continue
            integral, prior, stderr, tokens = zip(*text_parts)
            bounds[index] = TextBound(sum(tokens), len(text.encode()), len(text_parts), sum(integral), sum(prior),
                                      math.sqrt(sum(se**2 for se in stderr)), num_t, "per-text", num_t * len(text_parts))

    def conditional_nll(
        self,
        contexts: Sequence[str],
        continuations: Sequence[str],
        num_t: int = 128,
        *,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        truncate_context: bool = False,
        progress: bool = False,
        **bound_kwargs,
    ) -> list[ConditionalScore]:
        """-log p(continuation | context) per pair: an upper bound in nats with its standard error.

        Each pair is tokenised as lm-evaluation-harness does (``ddlm.text_scores.encode_pair``) and
        the sequence context + continuation (no padding; at most the model's length, else a
        ValueError naming the pair, or with ``truncate_context`` the context keeps its last tokens)
        is bounded with the context clamped (``ddlm.likelihood.conditional_nll_bound``, ``num_t``
        times per pair): a bound on the data's conditional for absorbing models, on the clamped
        reverse process's conditional for uniform ones (see there). ``.greedy``: see
        ``ConditionalScore``. seed / generator: the random stream (generator wins if given);
        batch_size: sequences per model call (default bounded by the available memory); other
        keyword arguments go to the bound (t_sampling, t_power, base).
        """
        check_count("num_t", num_t)
        check_count("batch_size", batch_size, allow_none=True)
        generator = self._generator(generator, None if generator is not None else seed)
        pairs = encode_pairs(self.tokenizer, contexts, continuations, self.max_length, truncate_context=truncate_context)
        groups: dict[int, list[int]] = {}
        for index, (context_ids, continuation_ids) in enumerate(pairs):
            groups.setdefault(len(context_ids) + len(continuation_ids), []).append(index)
        scores: list[ConditionalScore | None] = [None] * len(pairs)
        with tqdm(total=len(pairs), desc="conditional bound", disable=not progress) as bar:
            for length, members in sorted(groups.items()):
                step = batch_size or model_batch_size(self.model, length, self.device, self.graph.num_states)
                group = max(1, step // num_t)
                for start in range(0, len(members), group):
                    chunk = members[start:start + group]
                    x0 = torch.tensor([pairs[i][0] + pairs[i][1] for i in chunk], device=self.device)
                    fixed = torch.zeros_like(x0, dtype=torch.bool)
                    for row, index in enumerate(chunk):
                        fixed[row, :len(pairs[index][0])] = True
                    result = conditional_nll_bound(self.score_fn, self.graph, self.noise, x0, fixed, num_t, generator,
                                                   batch_size=step, **bound_kwargs)
                    greedy = self._greedy(x0, fixed)
                    for row, index in enumerate(chunk):
                        scores[index] = ConditionalScore(float(result.bound[row]), float(result.stderr[row]), len(pairs[index][1]),
                                                         None if greedy is None else bool(greedy[row]), num_t)
                    bar.update(len(chunk))
        return scores

    @torch.no_grad()
    def _greedy(self, x0: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor | None:
        """Bool[B]: whether every free token of x0 Long[B, L] is the argmax over real tokens of the model's p(x0_i | x_t)
        with all free positions masked (absorbing; one model call at the sigma_bar whose mask probability
        1 - e^-sigma_bar is the masked fraction); None for graphs without a mask."""
        mask_id = self.graph.mask_id
        if mask_id is None:
            return None
        free = ~fixed
        fraction = free.double().mean(1).clamp(max=1 - 1e-6)
        sigma_bar = (-torch.log1p(-fraction)).clamp(max=float(self.noise.total(1.0))).to(self.device)
        x_t = torch.where(free, torch.full_like(x0, mask_id), x0)
        log_score = self.score_fn(x_t, sigma_bar, positions=free)  # [R, S]: p(x0_i = y | x_t) is proportional to s_y
        hits = (log_score[:, :mask_id].argmax(-1) == x0[free]).long()
        rows = free.nonzero()[:, 0]
        misses = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device).index_add_(0, rows, 1 - hits)
        return misses == 0
