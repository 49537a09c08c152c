"""ddlm models in EleutherAI's lm-evaluation-harness (``pip install 'ddlm[eval]'``).

    ddlm-lm-eval --model ddlm --model_args pretrained=DIR,num_t=128 --tasks lambada_openai
    lm_eval --model ddlm --model_args pretrained=DIR --tasks ...   # lm_eval releases that load
                                                                   # "lm_eval.models" entry points

Importing this module registers the model class under the name "ddlm" (``ddlm-lm-eval`` imports it
and then runs lm_eval's own command line); the package also declares it as an ``lm_eval.models``
entry point. What each request computes (nats; lm_eval receives log-likelihoods, their negatives):

- ``loglikelihood(context, continuation)``: ``ddlm.evaluation.score_continuations``. A diffusion
  model gives an upper bound on -log p(continuation | context) (the context clamped, ``num_t``
  Monte Carlo t per request), so the reported log-likelihood is a *lower* bound, with a standard
  error per request (logged, summed, on the ``lm_eval.ddlm`` logger); is_greedy is
  ``ConditionalScore.greedy``. An AR model gives the exact value by the chain rule and
  is_greedy as teacher-forced argmax. Contexts longer than the model keep their last tokens.
- ``loglikelihood_rolling(text)``: ``ddlm.evaluation.score_texts``: the text in blocks of the
  model's length, each scored on its own (the rule of ``ddlm eval``; no context carried between
  blocks); a bound for diffusion models, exact for AR models.
- ``generate_until(context, gen_kwargs)``: absorbing diffusion models decode the continuation
  block by block after the prompt (``DiffusionPipeline.generate``); uniform ones fill
  ``[context, max_gen_toks]`` by infilling (``DiffusionPipeline.infill``; prompt and continuation
  must fit the model); AR models decode token by token. All generate ``max_gen_toks`` (default
  256) tokens or up to the first EOS, and the text is cut before the first stop string
  (``until``). temperature 0 (lm_eval's default, ``do_sample=False``) is greedy; uniform models
  have no greedy decoding and always sample.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import MODEL_REGISTRY, register_model
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("ddlm.lm_eval_model needs lm-evaluation-harness: pip install 'ddlm[eval]' (or pip install lm_eval)") from error

from ..core.checks import check_count, is_int
from ..sampling.decoding import shape_log_weights
from ..sampling.loop import PREDICTORS, sample_categorical
from ..text.corpora import eos_id
from .scoring import load_model, load_tokenizer, score_continuations, score_texts

logger = logging.getLogger("lm_eval.ddlm")

MODEL_NAME = "ddlm"
DEFAULT_MAX_GEN_TOKS = 256  # lm_eval's own default for generate_until


def _requests_per_call(batch_size, max_batch_size) -> int | None:
    """lm_eval's batch_size (an int, a digit string, "auto" or "auto:N") as requests per call; None: ddlm's default."""
    if batch_size is None or (isinstance(batch_size, str) and batch_size.startswith("auto")):
        check_count("max_batch_size", max_batch_size, allow_none=True)
        return max_batch_size
    if isinstance(batch_size, str) and batch_size.isdecimal():
        batch_size = int(batch_size)
    if not is_int(batch_size, 1):
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    return batch_size


def _stop_strings(until) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"until must be a string or a list of strings, got {until!r}")
    return [s for s in until if s]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (without) the earliest occurrence of any stop string."""
    end = len(text)
    for stop in stops:
        found = text.find(stop)
        if found != -1:
            end = min(end, found)
    return text[:end]


DTYPES = ("float32", "bfloat16", "float16")


class DDLMEvalModel(LM):
    """A ddlm model (diffusion or AR) as an lm-evaluation-harness ``LM``.

    pretrained: a model directory or hub id of any family ``ddlm.text.loading.load_model`` reads (ddlm, MDLM, LLaDA,
    Dream, transformers masked LMs); tokenizer: another tokenizer directory; dtype: "float32", "bfloat16" or
    "float16" (default: as saved). num_t: t samples per request of a diffusion model's bound (even; AR
    models ignore it). steps / predictor: the sampler of ``generate_until`` (``ddlm.sampling``).
    batch_size: requests per model call (lm_eval's ``--batch_size``; a diffusion request is
    ``num_t`` sequences, an AR one a single sequence); "auto" or None: ddlm's memory-bounded
    default, capped at max_batch_size requests if given. seed: the random seed of the Monte Carlo
    bounds and the samplers (the same seed and batch size give the same numbers).
    """

    def __init__(self, pretrained: str, num_t: int = 128, steps: int = 128, predictor: str = "analytic", device: str | None = None,
                 batch_size: int | str | None = None, max_batch_size: int | None = None, seed: int = 0, tokenizer: str | None = None,
                 dtype: str | None = None):
        super().__init__()
        check_count("num_t", num_t)
        check_count("steps", steps)
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
        if not is_int(seed, 0):
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.requests_per_call = _requests_per_call(batch_size, max_batch_size)
        device = torch.device(device or "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            logger.warning("device %s is not available (torch sees no GPU); using the CPU", device)
            device = torch.device("cpu")
        if dtype not in (None, *DTYPES):
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.model, self.tokenizer = load_model(pretrained, tokenizer=load_tokenizer(tokenizer) if tokenizer else None, device=device,
                                                dtype=None if dtype is None else getattr(torch, dtype))
        self._device = device
        self.num_t, self.steps, self.predictor, self.seed = num_t, steps, predictor, seed
        self.is_ar = self.model.config.objective == "ar"
        self.max_length = self.model.config.max_position_embeddings
        if not self.is_ar:
            from ..text.pipeline import DiffusionPipeline

            self.pipeline = DiffusionPipeline(self.model, self.tokenizer)
        self._warned_uniform = False

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__

    def _model_batch(self) -> int | None:
        """Sequences per model call for ddlm's scorers: requests per call times the sequences one request costs."""
        if self.requests_per_call is None:
            return None
        return self.requests_per_call * (1 if self.is_ar else self.num_t)

    def _chunks(self, items: list) -> list[tuple[int, list]]:
        step = self.requests_per_call or max(1, len(items))
        return [(start, items[start:start + step]) for start in range(0, len(items), step)]

    # ----------------------------------------------------------------------------------- scoring

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per request: exact (AR) or minus a bound (diffusion)."""
        pairs = [request.args for request in requests]
        results, scores = [], []
        for start, chunk in self._chunks(pairs):
            contexts, continuations = [c for c, _ in chunk], [c for _, c in chunk]
            chunk_scores = score_continuations(self.model, self.tokenizer, contexts, continuations, self.num_t, seed=self.seed + start,
                                               batch_size=self._model_batch(), truncate_context=True, progress=not disable_tqdm)
            scores += chunk_scores
            for (context, continuation), score in zip(chunk, chunk_scores):
                value = (-score.nll, bool(score.greedy))
                self.cache_hook.add_partial("loglikelihood", (context, continuation), value)
                results.append(value)
        if scores and not self.is_ar:
            errors = [s.stderr for s in scores]
            logger.info("ddlm: %d loglikelihood requests, bounds with %d t each: Monte Carlo standard error per request "
                        "mean %.4f, largest %.4f nats; of their sum %.4f nats", len(scores), self.num_t,
                        sum(errors) / len(errors), max(errors), math.sqrt(sum(e * e for e in errors)))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) per request: blocks of the model's length, exact (AR) or minus a bound (diffusion)."""
        texts = [request.args[0] for request in requests]
        results, bounds = [], []
        for start, chunk in self._chunks(texts):
            chunk_bounds = score_texts(self.model, self.tokenizer, chunk, None if self.is_ar else self.num_t,
                                       batch_size=self._model_batch(), seed=self.seed + start, progress=not disable_tqdm)
            bounds += chunk_bounds
            for text, bound in zip(chunk, chunk_bounds):
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), -bound.bound)
                results.append(-bound.bound)
        if bounds and not self.is_ar:
            logger.info("ddlm: %d loglikelihood_rolling requests, bounds with %d t per block: standard error of their sum %.4f nats",
                        len(bounds), self.num_t, math.sqrt(sum(b.stderr**2 for b in bounds)))
        return results

    # ----------------------------------------------------------------------------------- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The continuation of each context, cut before its first stop string (see the module docstring)."""
        generator = torch.Generator(self._device).manual_seed(self.seed)
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            options = dict(gen_kwargs or {})
            stops = _stop_strings(options.pop("until", None))
            max_new = options.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
            check_count("max_gen_toks", max_new)
            temperature = options.pop("temperature", None)
            do_sample = options.pop("do_sample", bool(temperature))  # lm_eval: greedy unless asked to sample
            temperature = (1.0 if temperature is None else float(temperature)) if do_sample else 0.0
            shaping = dict(temperature=temperature, top_k=options.pop("top_k", None), top_p=float(options.pop("top_p", 1.0)))
            if options:
                raise ValueError(f"generation arguments not supported by the ddlm model: {sorted(options)} "
                                 "(supported: until, max_gen_toks, do_sample, temperature, top_k, top_p)")
            if self.is_ar:
                text = self._ar_generate(context, max_new, stops, generator, **shaping)
            else:
                text = self._diffusion_generate(context, max_new, generator, **shaping)
            text = cut_at_stop(text, stops)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    def _diffusion_generate(self, context: str, max_new: int, generator, temperature: float, top_k, top_p: float) -> str:
        pipe = self.pipeline
        sampling = dict(generator=generator, progress=False)
        if pipe.graph.mask_id is None:  # uniform: no greedy decoding, no block decoding; fill [context, n] at once
            if (temperature != 1 or top_k is not None or top_p != 1) and not self._warned_uniform:
                logger.warning("a uniform model samples its own distribution: temperature / top_k / top_p (greedy "
                               "decoding too) are not available and are ignored")
                self._warned_uniform = True
            text = pipe.infill([context, max_new] if context else [max_new], 1, self.steps, self.predictor, **sampling)[0]
            continuation = text[len(context):]
        else:
            text = pipe.generate(1, steps=self.steps, predictor=self.predictor, prompt=context or None, max_new_tokens=max_new,
                                 stop_at_eos=self.tokenizer.eos_token_id is not None, temperature=temperature, top_k=top_k, top_p=top_p, **sampling)[0]
            continuation = text[len(context):]
        eos = self.tokenizer.eos_token
        return continuation.split(eos)[0] if eos else continuation

    @torch.no_grad()
    def _ar_generate(self, context: str, max_new: int, stops: list[str], generator, temperature: float, top_k, top_p: float) -> str:
        """Token by token after [EOS] + context (the last max_length tokens in view); stops at EOS or a stop string."""
        eos = eos_id(self.tokenizer)
        ids = [eos] + list(self.tokenizer(context, add_special_tokens=False)["input_ids"])
        new: list[int] = []
        for _ in range(max_new):
            window = torch.tensor([(ids + new)[-self.max_length:]], device=self._device)
            log_probs = self.model(window)[:, -1].double()
            token = int(sample_categorical(shape_log_weights(log_probs, temperature, top_k, top_p), generator)[0])
            if token == eos:
                break
            new.append(token)
            if stops and any(stop in self.tokenizer.decode(new) for stop in stops):
                break
        return self.tokenizer.decode(new)


if MODEL_NAME not in MODEL_REGISTRY:  # an lm_eval that loads entry points may hold its placeholder already
    register_model(MODEL_NAME)(DDLMEvalModel)


def main() -> None:
    """``ddlm-lm-eval``: lm_eval's command line with the ddlm model registered (same arguments as ``lm_eval``)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
