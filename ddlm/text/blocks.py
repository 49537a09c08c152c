"""Semi-autoregressive block decoding for ``DiffusionPipeline`` (absorbing models): blocks left to right after a
prompt, the future held at the mask within the model's length, a sliding window beyond it, and EOS stopping.

Within the context (prompt + new tokens <= the model's length W) each block is one run of
``ddlm.sampling.sample`` on the finished prefix (clamped) and the new block (masked), followed by the
positions still to come held at the mask (``MaskedFuture``). For an absorbing process a masked position
carries no information, so with exact ratios each block is drawn exactly from the model's conditional
given the prefix with the future marginalised, and the blocks together from the model's joint law at that
length: block decoding equals plain sampling in law (block_size = max_new_tokens without a prompt is the
same call, draw for draw). This is LLaDA's layout: with ``ddlm.sampling.decoding.llada_options`` block
decoding gives the tokens of LLaDA's reference generate() (see there). Beyond the context the window
slides: the model sees the last ``W - block_size`` finished tokens as clamped context plus the new block,
an approximation (older tokens are forgotten, and the model's law at length W is used as if the window
were a sequence start). guidance_scale without a label, for a model without classes, guides on the prompt
(``ddlm.guidance.prompt_guidance``, LLaDA's cfg_scale + 1): on the part of it still in the window, none once it slid out.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count, check_text, is_int
from ..core.score import ScoreFn, evaluate_score, row_index
from ..sampling.loop import sample
from ..sampling.score_cache import is_time_independent
from .generation import CALL_STATS, add_stats, guided_score_fn, resolve_generator
from .templates import token_ids


class MaskedFuture:
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


def check_block_options(pipe, num_samples, max_new_tokens, block_size, steps, batch_size, stop_at_eos, sample_kwargs) -> None:
    """ValueErrors for block decoding's arguments; drops a (True) ``denoise`` from ``sample_kwargs``."""
    if pipe.graph.mask_id is None:
        raise ValueError(f"block_size: block decoding (prompt=, block_size=, max_new_tokens=, stop_at_eos=) needs an absorbing "
                         f"model, got {pipe.graph!r}: a uniform process has no masked state to hold the future out and "
                         "clamping is not exact for it; use infill([prompt, n]) for a prompt that fits the model's length")
    check_count("max_new_tokens", max_new_tokens)
    if not (is_int(block_size, 1) and block_size <= pipe.max_length):
        raise ValueError(f"block_size must be an int in [1, {pipe.max_length}] (the model's maximum length), got {block_size!r}")
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
    if stop_at_eos and pipe.tokenizer.eos_token_id is None:
        raise ValueError("stop_at_eos needs a tokenizer with an EOS token (tokenizer.eos_token_id is None)")


def prompt_rows(pipe, prompt_ids, num_samples: int) -> torch.Tensor:
    """Each sample's prompt, Long[num_samples, P] on the pipeline's device, from prompt_ids: None, Long[P] (one
    prompt for all) or Long[num_samples, P] (one each, of one length), a tensor or nested lists of ints."""
    prompt = torch.as_tensor([] if prompt_ids is None else prompt_ids, dtype=torch.long).to(pipe.device)
    if prompt.dim() > 2 or (prompt.dim() == 2 and prompt.shape[0] not in (1, num_samples)):
        raise ValueError(f"prompt_ids must be one prompt Long[P] or one per sample Long[{num_samples}, P], got shape "
                         f"{list(prompt.shape)}")
    if prompt.numel():
        pipe.graph.check_clean(prompt, "prompt_ids")
    return (prompt if prompt.dim() == 2 else prompt.reshape(1, -1)).expand(num_samples, -1).clone()


def decode_block(pipe, score_fn, seqs, active, size, context, generator, batch_size, steps, predictor, totals, sample_kwargs):
    """The next block's new tokens Long[B, size] for the ``active`` rows of ``seqs`` (EOS, else 0, for the others):
    ``ddlm.sampling.sample`` on the last ``context`` tokens, clamped, and ``size`` masked ones, in batches."""
    eos = pipe.tokenizer.eos_token_id
    length = context + size
    x_init = torch.cat([seqs[active, seqs.shape[1] - context:], seqs.new_zeros(len(active), size)], 1)
    fixed = torch.zeros(length, dtype=torch.bool, device=pipe.device)
    fixed[:context] = True
    new = seqs.new_full((seqs.shape[0], size), eos if eos is not None else 0)
    step = batch_size or len(active)
    for first in range(0, len(active), step):
        rows = slice(first, first + step)
        n = len(active[rows])
        batch_stats = {}
        out = sample(score_fn, pipe.graph, pipe.noise, (n, length), steps, predictor, True, generator,
                     x_init=x_init[rows], fixed=fixed.expand(n, length), device=pipe.device, progress=False,
                     stats=batch_stats, **sample_kwargs)
        new[active[rows]] = out[:, context:]
        add_stats(totals, batch_stats)
    return new


def cut_at_eos(rows: torch.Tensor, eos: int) -> list[torch.Tensor]:
    """Each row of ``rows`` cut right after its first ``eos`` (rows without one whole)."""
    results = []
    for row in rows:
        hits = (row == eos).nonzero()
        results.append(row[: int(hits[0]) + 1] if len(hits) else row)
    return results


def sample_blocks(pipe, num_samples: int, max_new_tokens: int, block_size: int, steps: int, predictor: str, *,
                  prompt_ids, stop_at_eos: bool, batch_size: int | None, generator, seed, progress: bool, stats: dict | None,
                  label, guidance_scale, on_block=None, **sample_kwargs) -> list[torch.Tensor]:
    """``DiffusionPipeline.sample_blocks``: per sample the new token ids Long[n] (see the module docstring).

    prompt_ids: one prompt for every sample or one per sample, of one length (``prompt_rows``).
    label / guidance_scale: ``ddlm.text.generation.guided_score_fn``; a model without classes is guided on the prompt
    (its part still in the window beyond the model's length; none: no guidance).

    stop_at_eos: a sample stops after the block in which the tokenizer's EOS token first appears among
    its new tokens, and its ids are cut right after that EOS (the others go on; generation ends when
    every sample stopped or ``max_new_tokens`` are made). Time-independent models reuse the clamped
    prefix through the sampler's exact cache (``cache``: see ``ddlm.sampling.sample``).
    on_block: called with each finished block's tokens, Long[num_samples, size] on the CPU (streaming).
    """
    check_block_options(pipe, num_samples, max_new_tokens, block_size, steps, batch_size, stop_at_eos, sample_kwargs)
    eos = pipe.tokenizer.eos_token_id
    seqs = prompt_rows(pipe, prompt_ids, num_samples)
    generator = resolve_generator(generator, seed, pipe.device)
    width, start = pipe.max_length, seqs.shape[1]
    target = min(width, start + max_new_tokens)  # the window length within the context
    done = torch.zeros(num_samples, dtype=torch.bool, device=pipe.device)
    totals = {**dict.fromkeys(CALL_STATS, 0), "blocks": 0}
    blocks = range(0, max_new_tokens, block_size)
    for made in tqdm(blocks, desc="blocks", disable=not progress or len(blocks) == 1):
        size = min(block_size, max_new_tokens - made)
        context = min(seqs.shape[1], width - size)
        in_window = torch.arange(target, device=pipe.device) < start - (seqs.shape[1] - context)  # the prompt's positions
        base_fn = guided_score_fn(pipe, label, guidance_scale, in_window if start else None)
        score_fn = MaskedFuture(base_fn, pipe.graph.mask_id, target - context - size)
        new = decode_block(pipe, score_fn, seqs, (~done).nonzero().squeeze(1), size, context, generator, batch_size, steps,
                           predictor, totals, sample_kwargs)
        totals["blocks"] += 1
        seqs = torch.cat([seqs, new], 1)
        if on_block is not None:
            on_block(new.cpu())
        if stop_at_eos:
            done |= (new == eos).any(1)
            if bool(done.all()):
                break
    if stats is not None:
        stats.update(totals)
    rows = seqs[:, start:].cpu()
    return cut_at_eos(rows, eos) if stop_at_eos else list(rows)


def generate_blocks(pipe, num_samples: int, length: int | None, steps: int, predictor: str, *, prompt: str | None,
                    block_size: int | None, max_new_tokens: int | None, stop_at_eos: bool, **kwargs) -> list[str]:
    """``DiffusionPipeline.generate`` by blocks: the prompt (byte-identical) and the decoded new tokens, cut before EOS."""
    if length is not None and max_new_tokens is not None:
        raise ValueError("pass length= or max_new_tokens= (the same thing for block decoding), not both")
    if max_new_tokens is None:
        max_new_tokens = pipe.max_length if length is None else length
    if prompt is not None:
        check_text("prompt", prompt)
    prompt_ids = token_ids(pipe.tokenizer, prompt) if prompt else []
    if block_size is None and isinstance(max_new_tokens, int):
        block_size = max_new_tokens if len(prompt_ids) + max_new_tokens <= pipe.max_length else max(1, pipe.max_length // 2)
    rows = pipe.sample_blocks(num_samples, max_new_tokens, block_size, steps, predictor, prompt_ids=prompt_ids,
                              stop_at_eos=stop_at_eos, **kwargs)
    eos = pipe.tokenizer.eos_token_id
    texts = []
    for row in rows:
        if stop_at_eos and len(row) and int(row[-1]) == eos:
            row = row[:-1]
        texts.append((prompt or "") + pipe.decode(row))
    return texts
