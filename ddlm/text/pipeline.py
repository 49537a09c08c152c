"""``DiffusionPipeline``: generate, infill and score text with a ratio network and a tokenizer.

The class holds the model, tokenizer and process and is the public front; its methods delegate the work
to ``generation`` (batched sampling, ids to text), ``blocks`` (block decoding after a prompt, EOS
stopping, sliding window), ``templates`` (gap syntax, length combinations, token ids), ``infill``
(clamped fills, unknown-length search) and ``scoring`` (bounds on texts and on continuations).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..core.checks import check_count
from ..core.manifest import write_model_manifest
from ..core.processes import Graph
from ..core.score import ScoreFn, accepts_positions, row_index
from ..models import DDLMForDiffusion
from ..models.masked_diffusion import MaskedDiffusionModel
from . import blocks, generation, scoring, templates
from . import chat as chatting
from . import infill as infilling
from .generation import MASK_TEXT  # noqa: F401  (re-exported: these names were defined here before the split)
from .infill import InfillCandidate
from .loading import check_vocabulary, load_model
from .scores import ConditionalScore, TextBound
from .scoring import BLOCKS_PER_BOUND  # noqa: F401
from .templates import GAP, MAX_LENGTH_COMBINATIONS, Template  # noqa: F401


class DiffusionPipeline:
    """A score network plus a tokenizer: ``generate``, ``infill`` and ``nll_bound`` on strings.

    model: a ``DDLMForDiffusion`` or an open-weight ``MaskedDiffusionModel`` (graph, noise and maximum length come
    from it) or any ``score_fn(x_t Long[B, L], sigma_bar [B]) -> log-scores [B, L, S]`` with ``graph``, ``noise``
    and ``max_length`` given. The tokenizer must have exactly the graph's N real tokens (a ``MaskedDiffusionModel``'s
    vocabulary may be longer when the ids past the tokenizer are never drawn).
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
        if isinstance(model, MaskedDiffusionModel):
            check_vocabulary(model, tokenizer)
        elif len(tokenizer) != self.graph.num_tokens:
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
                        device_map=None, progress: bool = True) -> "DiffusionPipeline":
        """Load a model directory, hub id or MDLM ``.ckpt`` of any supported family (``ddlm.text.loading.load_model``:
        ddlm models, MDLM, LLaDA, Dream, transformers masked LMs; no code from the directory runs): the model, and
        its tokenizer unless one is given. dtype: e.g. torch.bfloat16; device_map: "auto" or a dict, instead of
        device (progress=False: no "Loading weights" bar)."""
        model, tokenizer = load_model(path, tokenizer=tokenizer, device=device, dtype=dtype, device_map=device_map, progress=progress)
        return cls(model, tokenizer, device=device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model (safetensors + config), the tokenizer and a manifest of their files into one directory."""
        if not isinstance(self.model, DDLMForDiffusion):
            raise TypeError("only a DDLMForDiffusion model can be saved (an open-weight model is used from its own directory)")
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
        return generation.sampling_score_fn(self.model, self.score_fn, label, guidance_scale)

    def sample(self, num_samples: int, length: int, steps: int = 128, predictor: str = "analytic", *,
               x_init: torch.Tensor | None = None, fixed: torch.Tensor | None = None, denoise: bool = True,
               batch_size: int | None = None, generator: torch.Generator | None = None, seed: int | None = None,
               progress: bool = True, stats: dict | None = None, label: int | None = None, guidance_scale: float = 1.0,
               **sampler_options) -> torch.Tensor:
        """Token ids Long[num_samples, length]; x_init / fixed: Long/Bool[length], or [num_samples, length] per sample, clamped positions (or None).

        Batches of ``batch_size`` samples (default all) run ``ddlm.sampling.sample`` one after
        another with the same generator. predictor: any of ``ddlm.sampling.PREDICTORS``
        ("first_hitting" for absorbing models; it ignores ``steps``). stats: a dict that
        receives ``network_calls``, ``sequences_scored`` and ``positions_scored`` summed over the batches.
        sampler_options: any other keyword of ``ddlm.sampling.sample``, passed to it as is (cache, dtype,
        impl; decoding strategies and correctors: ``ddlm.text.generation.sample_batches`` lists them).
        label / guidance_scale: classifier-free guidance towards class ``label`` (class-conditional models) or, for a
        model without classes, on the ``fixed`` tokens (``ddlm.guidance.prompt_guidance``); one network call of a
        doubled batch per step unless the scale is 0 or 1.
        """
        return generation.sample_batches(
            self, num_samples, length, steps, predictor, x_init=x_init, fixed=fixed, denoise=denoise, batch_size=batch_size,
            generator=generator, seed=seed, progress=progress, stats=stats, label=label, guidance_scale=guidance_scale,
            **sampler_options)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids; mask ids (absorbing, undenoised) read as ``[MASK]``. A character that the ids
        (or the run before a mask) cut in two is left out instead of shown as U+FFFD (``decode_text``).
        ids: a 1-D integer tensor or a sequence of ints in [0, num_states); others are a TypeError / ValueError."""
        return generation.decode_ids(self.tokenizer, self.graph, ids)

    def generate(self, num_samples: int = 1, length: int | None = None, steps: int = 128, predictor: str = "analytic", *,
                 prompt: str | None = None, block_size: int | None = None, max_new_tokens: int | None = None,
                 stop_at_eos: bool = False, **kwargs) -> list[str]:
        """Samples as text; length in tokens (default the model's maximum). Keyword arguments as in ``sample``.

        Semi-autoregressive block decoding (absorbing models) when any of ``prompt``, ``block_size``, ``max_new_tokens``
        or ``stop_at_eos`` is given: ``max_new_tokens`` (default ``length``, else the model's maximum) new tokens are
        generated in blocks of ``block_size`` left to right after the optional ``prompt`` (see ``sample_blocks``).
        block_size defaults to all new tokens in one block when prompt and new tokens fit the model's length, else half
        the model's length. Each text is the prompt (byte-identical) followed by the new tokens; with ``stop_at_eos``
        it is cut at the first EOS token (not in the text). guidance_scale without a label (a model without classes):
        guidance on the prompt, the prompt masked for the unconditional part (LLaDA's cfg_scale + 1; ``sample_blocks``).
        """
        if prompt is None and block_size is None and max_new_tokens is None and stop_at_eos is False:
            ids = self.sample(num_samples, self.max_length if length is None else length, steps, predictor, **kwargs)
            return [self.decode(row) for row in ids.cpu()]
        return blocks.generate_blocks(self, num_samples, length, steps, predictor, prompt=prompt, block_size=block_size,
                                      max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, **kwargs)

    def sample_blocks(self, num_samples: int, max_new_tokens: int, block_size: int, steps: int = 128, predictor: str = "analytic",
                      *, prompt_ids: Sequence[int] | torch.Tensor | None = None, stop_at_eos: bool = False,
                      batch_size: int | None = None, generator: torch.Generator | None = None, seed: int | None = None,
                      progress: bool = True, stats: dict | None = None, label: int | None = None, guidance_scale: float = 1.0,
                      **sample_kwargs) -> list[torch.Tensor]:
        """Semi-autoregressive block decoding (absorbing models): per sample the new token ids Long[n].

        Blocks of ``block_size`` tokens (the last one shorter) follow ``prompt_ids``, each one run of ``ddlm.sampling.sample``
        with the finished prefix clamped: sampling in law within the model's length, a sliding window beyond. stop_at_eos: a
        sample stops after the block in which EOS first appears, its ids cut right after it. stats: ``network_calls``,
        ``sequences_scored``, ``positions_scored``, ``blocks``. on_block: called with each finished block (streaming).
        Other keyword arguments go to ``ddlm.sampling.sample``; label / guidance_scale as in ``sample`` (a model without
        classes: guidance on ``prompt_ids``). Uniform models are refused (use ``infill``)."""
        return blocks.sample_blocks(
            self, num_samples, max_new_tokens, block_size, steps, predictor, prompt_ids=prompt_ids, stop_at_eos=stop_at_eos,
            batch_size=batch_size, generator=generator, seed=seed, progress=progress, stats=stats, label=label,
            guidance_scale=guidance_scale, **sample_kwargs)

    def chat(self, messages: Sequence[dict], max_new_tokens: int = 256, block_size: int = 32, **kwargs) -> str:
        """The assistant's answer to ``messages`` ([{"role", "content"}, ...]) after the chat template, decoded by blocks up
        to EOS (``ddlm.text.chat.chat``: steps, predictor, ``stream`` (called with each block's text), ``sample_blocks``' keywords)."""
        return chatting.chat(self, messages, max_new_tokens=max_new_tokens, block_size=block_size, **kwargs)

    def parse_template(self, template: Template) -> list[str | int | range]:
        """Segments of a template: given text (str) and gaps (int: n tokens; range: candidate lengths) (``templates``)."""
        return templates.parse_template(template, self.max_length)

    def gap_length_candidates(self, template: Template) -> list[tuple[int, ...]]:
        """Every combination of gap lengths a template allows, one int per gap (``templates.gap_length_candidates``)."""
        return templates.gap_length_candidates(template, self.tokenizer, self.max_length)

    def encode_template(self, template: Template) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str | None, int]]]:
        """Token ids Long[L] (gaps 0), given positions Bool[L], spans: (text, token count) or (None, gap length)."""
        return templates.encode_template(template, self.tokenizer, self.max_length)

    def infill(self, template: Template, num_samples: int = 1, steps: int = 128, predictor: str = "analytic", *,
               num_t: int = 64, return_candidates: bool = False, **kwargs) -> list[str] | tuple[list[str], list[InfillCandidate]]:
        """Fill every gap of ``template``; returns ``num_samples`` texts.

        The given text comes back byte-identical (it is copied, not re-decoded); gap tokens are
        sampled conditionally on it by clamping (exact for absorbing models, approximate for
        uniform ones). Prefix prompting is ``["prompt", n]``, suffix prompting ``[n, "ending"]``.
        Keyword arguments as in ``sample`` (guidance_scale without a label: guidance on the given text). Gaps of unknown
        length (``{{lo..hi}}``, or a range in a list): every combination of lengths is filled ``num_samples`` times and
        scored with the model's likelihood bound (``num_t`` times, unguided); the lowest bound per token of the whole filled
        sequence wins (``ddlm.text.infill`` says why, and what it cannot resolve). return_candidates: also
        return the ``InfillCandidate`` of each: ``texts, candidates = pipe.infill(..., return_candidates=True)``.
        """
        return infilling.infill(self, template, num_samples, steps, predictor, num_t=num_t, return_candidates=return_candidates,
                                **kwargs)

    def nll_bound(self, texts: Sequence[str], num_t: int | None = None, *, estimator: str = "per-text", batch_size: int | None = None,
                  generator: torch.Generator | None = None, seed: int | None = None, progress: bool = True,
                  **bound_kwargs) -> list[TextBound]:
        """An upper bound on -log p(text) with its standard error, per text.

        Texts are tokenised without special tokens and cut into blocks of the model's maximum length,
        bounded independently and summed. estimator: "per-text" (num_t, default 128, times every
        block), "dataset" (num_t, default 1, times per block, stratified over a text's blocks; needs
        2 or more), or "auto" ("dataset" from ``DATASET_MIN_BLOCKS``, 16, blocks on); see
        ``ddlm.text.scoring``. batch_size: sequences per model call (default bounded by the available
        memory); other keyword arguments go to the bound (t_sampling, t_power, base).
        """
        return scoring.nll_bounds(self, texts, num_t, estimator=estimator, batch_size=batch_size, generator=generator, seed=seed,
                                  progress=progress, **bound_kwargs)

    def conditional_nll(self, contexts: Sequence[str], continuations: Sequence[str], num_t: int = 128, *, seed: int | None = 0,
                        generator: torch.Generator | None = None, batch_size: int | None = None, truncate_context: bool = False,
                        progress: bool = False, **bound_kwargs) -> list[ConditionalScore]:
        """-log p(continuation | context) per pair: an upper bound in nats with its standard error.

        Each pair is tokenised as lm-evaluation-harness does (``ddlm.text_scores.encode_pair``) and
        context + continuation (at most the model's length, else a ValueError naming the pair, or with
        ``truncate_context`` the context keeps its last tokens) is bounded with the context clamped
        (``ddlm.likelihood.conditional_nll_bound``, ``num_t`` times per pair; see there for uniform
        models). ``.greedy``: see ``ConditionalScore``. seed / generator: the random stream (generator
        wins); batch_size and other keyword arguments as in ``nll_bound``.
        """
        return scoring.conditional_nlls(self, contexts, continuations, num_t, seed=seed, generator=generator, batch_size=batch_size,
                                        truncate_context=truncate_context, progress=progress, **bound_kwargs)
