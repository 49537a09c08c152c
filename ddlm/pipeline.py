"""``DiffusionPipeline``: generate, infill and score text with a ratio network and a tokenizer."""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .evaluation import TextBound, blocks_by_length, load_model, text_blocks
from .likelihood import nll_bound
from .model import DDLMForDiffusion
from .processes import Graph
from .sampling import check_count, sample
from .score import ScoreFn, accepts_positions, row_index
from .score_cache import is_time_independent

GAP = re.compile(r"\{\{\s*([-+]?[\d.]+)\s*\}\}")  # {{n}}; signs and points are caught to be refused
MASK_TEXT = "[MASK]"  # how a still-masked position reads when sampling ends without denoising

Template = str | Sequence[str | int]


def _gap_length(text: str) -> int:
    """The token count of a ``{{n}}`` gap; a ValueError for anything but a plain int (too long ones are refused later)."""
    if not text.isdecimal():
        raise ValueError(f"a gap {{{{{text}}}}} must hold a positive int number of tokens")
    if len(text.lstrip("0")) > 1000:  # int() refuses over 4300 digits; no model is this long
        raise ValueError(f"a gap of a {len(text.lstrip('0'))}-digit number of tokens exceeds any model's maximum length")
    return int(text)


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
    def from_pretrained(cls, path: str | os.PathLike, *, tokenizer=None, device=None, dtype: torch.dtype | None = None) -> "DiffusionPipeline":
        """Load a ``save_pretrained`` directory (or hub id): the model, and its tokenizer unless one is given."""
        model, tokenizer = load_model(path, tokenizer=tokenizer, device=device, dtype=dtype)
        return cls(model, tokenizer, device=device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model (safetensors + config) and the tokenizer into one directory."""
        if not isinstance(self.model, DDLMForDiffusion):
            raise TypeError("only a DDLMForDiffusion model can be saved")
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

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

    def sampling_score_fn(self) -> ScoreFn:
        """``score_fn`` carrying the model's ``time_independent`` declaration (``ddlm.score_cache``) for samplers."""
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
        dtype: torch.dtype = torch.float64,
        progress: bool = True,
        cache: bool | None = None,
        stats: dict | None = None,
    ) -> torch.Tensor:
        """Token ids Long[num_samples, length]; x_init / fixed: Long/Bool[length] clamped positions (or None).

        Batches of ``batch_size`` samples (default all) run ``ddlm.sampling.sample`` one after
        another with the same generator. predictor: any of ``ddlm.sampling.PREDICTORS``
        ("first_hitting" for absorbing models; it ignores ``steps``). cache: as in
        ``ddlm.sampling.sample`` (None: on for time-independent models). stats: a dict that
        receives ``network_calls`` and ``positions_scored`` summed over the batches.
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
        score_fn = self.sampling_score_fn()
        totals = {"network_calls": 0, "positions_scored": 0}
        for start in tqdm(range(0, num_samples, batch_size), desc="batches", disable=not progress or batch_size >= num_samples):
            n = min(batch_size, num_samples - start)
            batch_stats = {}
            batches.append(sample(
                score_fn, self.graph, self.noise, (n, length), steps, predictor, denoise, generator,
                x_init=None if x_init is None else x_init.to(self.device).expand(n, length),
                fixed=None if fixed is None else fixed.to(self.device).expand(n, length),
                dtype=dtype, device=self.device, progress=progress, cache=cache, stats=batch_stats))
            for key in totals:
                totals[key] += batch_stats[key]
            totals["cache"] = batch_stats["cache"]
        if stats is not None:
            stats.update(totals)
        return torch.cat(batches)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids; mask ids (absorbing, undenoised) read as ``[MASK]``."""
        ids = torch.as_tensor(ids).tolist()
        pieces, run = [], []
        for token in ids + [None]:
            if token is not None and token < self.graph.num_tokens:
                run.append(token)
                continue
            if run:
                pieces.append(self.tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False))
                run = []
            if token is not None:
                pieces.append(MASK_TEXT)
        return "".join(pieces)

    def generate(self, num_samples: int = 1, length: int | None = None, steps: int = 128, predictor: str = "analytic", **kwargs) -> list[str]:
        """Unconditional samples as text; length in tokens (default the model's maximum).

        Keyword arguments as in ``sample`` (denoise, batch_size, generator, seed, dtype, progress).
        """
        ids = self.sample(num_samples, self.max_length if length is None else length, steps, predictor, **kwargs)
        return [self.decode(row) for row in ids.cpu()]

    def parse_template(self, template: Template) -> list[str | int]:
        """Segments of a template: given text (str) and gaps (int, tokens to generate).

        A string template marks gaps as ``{{n}}``; a list mixes strings and ints.
        """
        if isinstance(template, str):
            parts = GAP.split(template)
            segments = [_gap_length(part) if i % 2 else part for i, part in enumerate(parts)]
        elif isinstance(template, Sequence):
            segments = list(template)
        else:
            raise TypeError(f"a template is a str with {{{{n}}}} gaps or a list of str and int, got {type(template).__name__}")
        for segment in segments:
            if isinstance(segment, bool) or not isinstance(segment, (str, int)):
                raise TypeError(f"template segments must be str (given text) or int (gap length), got {segment!r}")
            if isinstance(segment, int) and segment < 1:
                raise ValueError(f"a gap must have at least 1 token, got {segment}")
            if isinstance(segment, int) and segment > self.max_length:
                raise ValueError(f"a gap of {segment} tokens exceeds the model's maximum length {self.max_length}")
        gaps = sum(segment for segment in segments if isinstance(segment, int))
        if not gaps:
            raise ValueError("the template has no gap: mark one as {{n}} (n tokens) or pass an int in a list")
        if gaps > self.max_length:
            raise ValueError(f"the template's gaps need {gaps} tokens but the model's maximum length is {self.max_length}")
        return [segment for segment in segments if segment != ""]

    def encode_template(self, template: Template) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str | None, int]]]:
        """Token ids Long[L] (gaps hold 0), the given positions Bool[L], and the spans in order:
        (given text, its token count) or (None, gap length)."""
        spans, ids, given = [], [], []
        for segment in self.parse_template(template):
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

    def infill(self, template: Template, num_samples: int = 1, steps: int = 128, predictor: str = "analytic", **kwargs) -> list[str]:
        """Fill every gap of ``template`` with exactly its number of tokens; returns ``num_samples`` texts.

        The given text comes back byte-identical (it is copied, not re-decoded); gap tokens are
        sampled conditionally on it by clamping (exact for absorbing models, approximate for
        uniform ones). Prefix prompting is ``["prompt", n]``, suffix prompting ``[n, "ending"]``.
        Keyword arguments as in ``sample``.
        """
        ids, given, spans = self.encode_template(template)
        samples = self.sample(num_samples, len(ids), steps, predictor, x_init=ids, fixed=given, **kwargs).cpu()
        texts = []
        for row in samples:
            pieces, position = [], 0
            for text, n in spans:
                pieces.append(text if text is not None else self.decode(row[position:position + n]))
                position += n
            texts.append("".join(pieces))
        return texts

    def nll_bound(
        self,
        texts: Sequence[str],
        num_t: int = 128,
        *,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool = True,
        **bound_kwargs,
    ) -> list[TextBound]:
        """An upper bound on -log p(text) with its standard error, per text.

        Texts are tokenised without special tokens and cut into blocks of the model's maximum
        length (the last one shorter); blocks are bounded independently and their bounds summed.
        num_t: times per block; batch_size: sequences per model call; other keyword arguments go
        to ``ddlm.likelihood.nll_bound`` (t_sampling, t_power, base).
        """
        check_count("num_t", num_t)
        check_count("batch_size", batch_size, allow_none=True)
        generator = self._generator(generator, seed)
        groups = blocks_by_length(text_blocks(self.tokenizer, texts, self.max_length))
        parts = [[] for _ in texts]  # per text, per block: (integral, prior, stderr, tokens)
        for length, members in tqdm(sorted(groups.items()), desc="nll bound", disable=not progress):
            x0 = torch.tensor([ids for _, ids in members], device=self.device)
            result = nll_bound(self.score_fn, self.graph, self.noise, x0, num_t, generator, batch_size=batch_size, **bound_kwargs)
            for row, (index, _) in enumerate(members):
                parts[index].append((float(result.integral[row]), float(result.prior[row]), float(result.stderr[row]), length))
        bounds = []
        for text, text_parts in zip(texts, parts):
            integral, prior, stderr, tokens = zip(*text_parts)
            bounds.append(TextBound(sum(tokens), len(text.encode()), len(text_parts), sum(integral), sum(prior),
                                    math.sqrt(sum(se**2 for se in stderr)), num_t))
        return bounds
