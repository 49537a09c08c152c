"""What a run shows: held-out metrics (the likelihood bound, the exact AR NLL, the conditional bound of SFT
responses), samples, the console lines, the end-of-training report, and the metrics file on a resume."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..core.losses import ar_nll
from ..core.manifest import write_atomic
from ..likelihood.bounds import conditional_nll_bound, nll_bound
from ..text.corpora import eos_id
from .objective import with_labels
from .recipes import Recipe


@torch.no_grad()
def evaluate(model, recipe: Recipe, validation, accelerator, context: int | None = None) -> dict:
    """Validation metrics in nats per token: the likelihood bound (diffusion) or the exact NLL (AR, every
    token of a block scored, the first conditioned on the ``context`` token as ``ddlm eval`` does).
    Blocks with labels (a class-conditional model) are scored given their label, one class at a time.
    SFT examples (``ResponseBlocks``): the bound on -log p(response | prompt) per response token."""
    train = recipe.train
    count = min(train.eval_blocks, len(validation))
    x0 = validation[:count].to(accelerator.device)
    prompts = getattr(validation, "prompt_mask", None)
    if prompts is not None:
        model.eval()
        generator = torch.Generator(accelerator.device).manual_seed(train.seed)
        fixed = prompts[:count].to(accelerator.device)
        bound = conditional_nll_bound(model, model.graph, model.noise, x0, fixed, train.eval_num_t, generator)
        tokens = int((~fixed).sum())
        per_token = bound.bound.sum().item() / tokens
        model.train()
        return {"eval/bound_per_token": per_token, "eval/bound_stderr": bound.stderr.square().sum().sqrt().item() / tokens,
                "eval/ppl_bound": math.exp(per_token)}
    labels = None if validation.labels is None else validation.labels[:count].to(accelerator.device)
    groups = [(x0, None)] if labels is None else [(x0[labels == c], c) for c in labels.unique(sorted=True)]
    model.eval()
    if train.objective == "ar":
        nll = sum(ar_nll(with_labels(model, c), x, context=context).sum().item() for x, c in groups) / x0.numel()
        metrics = {"eval/nll_per_token": nll, "eval/ppl": math.exp(nll)}
    else:
        generator = torch.Generator(accelerator.device).manual_seed(train.seed)
        bounds = [nll_bound(with_labels(model, c), model.graph, model.noise, x, train.eval_num_t, generator) for x, c in groups]
        per_token = sum(b.bound.sum().item() for b in bounds) / x0.numel()
        stderr = math.sqrt(sum(b.stderr.square().sum().item() for b in bounds)) / x0.numel()
        metrics = {"eval/bound_per_token": per_token, "eval/bound_stderr": stderr, "eval/ppl_bound": math.exp(per_token)}
    model.train()
    return metrics


def generate_samples(model, tokenizer, recipe: Recipe, device, validation=None) -> list[str]:
    """Samples of the current (EMA) weights, seeded by the recipe (identical on every rank): unconditional, or for SFT
    examples the responses to the first validation prompts."""
    from ..text.pipeline import DiffusionPipeline

    train = recipe.train
    if getattr(validation, "prompt_mask", None) is not None:
        answers = sft_answers(model, tokenizer, validation, train.num_samples, train.sample_steps, torch.Generator(device).manual_seed(train.seed))
        return [f"{prompt}[[{answer}]]" for prompt, answer, _ in answers]
    pipe = DiffusionPipeline(model, tokenizer)
    texts = pipe.generate(train.num_samples, min(recipe.data.block_size, 128), train.sample_steps,
                          generator=torch.Generator(device).manual_seed(train.seed), progress=False)
    model.train()
    return texts


def sft_answers(model, tokenizer, examples, count: int, steps: int, generator) -> list[tuple[str, str, str]]:
    """(prompt, generated response, reference response) of the first ``count`` SFT examples: the response positions
    sampled given the prompt in ``steps`` steps, each response cut at its first EOS (model calls only)."""
    from ..text.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline(model, tokenizer)
    eos = eos_id(tokenizer)
    blocks, prompts = examples[:count].to(generator.device), examples.prompt_mask[:count].to(generator.device)
    filled = pipe.sample(len(blocks), blocks.shape[1], steps, x_init=blocks, fixed=prompts, generator=generator, progress=False)
    model.train()

    def until_eos(ids: torch.Tensor) -> str:
        ends = (ids == eos).nonzero()
        return pipe.decode(ids[:int(ends[0]) if len(ends) else len(ids)])

    starts = prompts.sum(1).tolist()
    return [(pipe.decode(block[:start]), until_eos(sample[start:]), until_eos(block[start:]))
            for block, sample, start in zip(blocks, filled, starts)]


def write_samples(texts: list[str], step: int, output_dir: Path) -> None:
    """Write samples to ``samples/step_N.txt``."""
    (output_dir / "samples").mkdir(exist_ok=True)
    (output_dir / "samples" / f"step_{step:08d}.txt").write_text("\n\n=====\n\n".join(texts))


def showcase(model, tokenizer, recipe: Recipe, validation, device) -> list[str]:
    """Report lines of a diffusion model: two samples and an infill of the middle third of a held-out block, or for
    SFT examples the responses to two held-out prompts (model calls only, so under FSDP every rank runs it)."""
    from ..text.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline(model, tokenizer)
    generator = torch.Generator(device).manual_seed(recipe.train.seed)
    if getattr(validation, "prompt_mask", None) is not None:
        lines = []
        for prompt, answer, reference in sft_answers(model, tokenizer, validation, 2, recipe.train.sample_steps, generator):
            lines += [f"prompt: {prompt!r}", f"  response:  {answer!r}", f"  reference: {reference!r}"]
        return lines
    length, steps = min(recipe.data.block_size, 128), recipe.train.sample_steps
    lines = []
    for text in pipe.generate(2, length, steps, generator=generator, progress=False):
        lines += ["sample:", text]
    block = validation[0][:length].to(device)
    third = length // 3
    fixed = torch.ones(length, dtype=torch.bool)
    fixed[third:length - third] = False
    filled = pipe.sample(1, length, steps, x_init=block, fixed=fixed, generator=generator, progress=False)[0]
    lines += [f"infill of the middle {length - 2 * third} tokens of a held-out block (in [[ ]]):",
              pipe.decode(filled[:third]) + "[[" + pipe.decode(filled[third:length - third]) + "]]" + pipe.decode(filled[length - third:]),
              "original middle: [[" + pipe.decode(block[third:length - third]) + "]]"]
    model.train()
    return lines


def report(recipe: Recipe, num_validation: int, metrics_file: Path, showcase_lines: list[str]) -> str:
    """The end-of-training summary: held-out metrics before (step 0) and after training as recorded in
    ``metrics.jsonl``, then the showcase lines."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    evaluations = [r for r in records if any(key.startswith("eval/") for key in r)]  # step 0 first, the last step last
    untrained, trained = evaluations[0], {key: value for key, value in evaluations[-1].items() if key.startswith("eval/")}
    count = min(recipe.train.eval_blocks, num_validation)
    lines = [f"held-out ({count} SFT examples of {recipe.data.block_size} tokens), nats per response token:" if recipe.data.format == "sft"
             else f"held-out ({count} blocks of {recipe.data.block_size} tokens), nats per token:"]
    start, end = ("before", "after") if recipe.finetune.active else ("untrained", "trained")
    for key, value in trained.items():
        before = f"{start} {untrained[key]:.4f} -> " if untrained.get("step") == 0 else ""
        lines.append(f"  {key}: {before}{end} {value:.4f}")
    return "\n".join(lines + showcase_lines)


def eval_line(step: int, metrics: dict) -> str:
    """The console line of an evaluation: the held-out bound +- one standard error and the perplexity bound
    (diffusion), or the exact NLL and perplexity (AR)."""
    if "eval/bound_per_token" in metrics:
        return (f"[step {step}] held-out bound {metrics['eval/bound_per_token']:.4f} +- {metrics['eval/bound_stderr']:.4f} "
                f"nats/token, perplexity bound {metrics['eval/ppl_bound']:.2f}")
    return f"[step {step}] held-out NLL {metrics['eval/nll_per_token']:.4f} nats/token (exact), perplexity {metrics['eval/ppl']:.2f}"


def set_aside_later_metrics(metrics_file: Path, step: int) -> None:
    """On a resume from ``step``: move the records of later steps (the interrupted run's, which this run
    writes again) and any unreadable line (a write cut by a kill) to ``metrics.after-<step>-<time>.jsonl``,
    so ``metrics.jsonl`` holds one record per step."""
    if not metrics_file.is_file():
        return

    def earlier(line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False
        return isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step

    lines = metrics_file.read_text().splitlines(keepends=True)
    later = [line for line in lines if not earlier(line)]
    if later:
        aside = metrics_file.with_name(f"metrics.after-{step}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        aside.write_text("".join(later))
        write_atomic(metrics_file, "".join(line for line in lines if earlier(line)))
