"""Fixed-seed draws of every sampler setting of docs/how-to/sampling.md, stored to detect any change of them.

``CASES`` lists (name, function returning a LongTensor). ``sample/...`` cases run ``ddlm.sampling.sample``
on the exact scores of small ``SequenceOracle``s; ``pipe/...`` cases run ``DiffusionPipeline`` on tiny
random float64 models (float64 makes a draw flipped by a last-bit difference between CPUs unlikely) with the
suite's byte tokenizer; text comes back as its UTF-8 bytes, ragged rows padded with -1. Some cases
draw the same tokens by design: the euler and analytic steps of an absorbing log-linear process are the
same law, first_hitting's tokens do not depend on the schedule, the cache draws what the uncached run
draws, and top_k >= N changes nothing.
tests/test_sampler_outputs.py compares them with tests/data/sampler_outputs.json. Rewrite that file
only for a change of the draws that is meant: ``python tests/sampler_outputs.py --write``.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from typing import Callable

import torch

import ddlm
from ddlm.guidance import classifier_free_guidance, classifier_guidance
from ddlm.oracle import ConditionalSequenceOracle
from ddlm.pipeline import DiffusionPipeline
from helpers import byte_tokenizer, randomised

STORE = pathlib.Path(__file__).resolve().parent / "data" / "sampler_outputs.json"
BATCH, LENGTH, STEPS = 4, 5, 8  # oracle cases: 3 real tokens, length 5
TEXT_LENGTH = 16  # pipeline cases: the models' maximum length
NOISE = {"loglinear": ddlm.LogLinear(), "geometric": ddlm.Geometric()}

CASES: list[tuple[str, Callable[[], torch.Tensor]]] = []


def case(name: str, make: Callable[..., torch.Tensor], *args, **kwargs) -> None:
    CASES.append((name, functools.partial(make, *args, **kwargs)))


def padded(rows) -> torch.Tensor:
    """Rows of ints of any lengths as Long[n, longest], padded with -1."""
    rows = [list(map(int, row)) for row in rows]
    width = max(map(len, rows))
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long)


def text_bytes(texts) -> torch.Tensor:
    return padded(text.encode("utf-8") for text in texts)


# ----------------------------------------------------------------- ddlm.sampling.sample on exact oracles
@functools.cache
def oracle(process: str) -> ddlm.SequenceOracle:
    graph = ddlm.Absorbing(3) if process == "absorbing" else ddlm.Uniform(3)
    return ddlm.SequenceOracle.random(graph, LENGTH, generator=torch.Generator().manual_seed(0))


def time_independent(score_fn):
    """score_fn declaring the time-independent protocol (exact absorbing ratios have its form), so the cache can run."""
    fn = functools.partial(score_fn)
    fn.time_independent = True
    return fn


def low(process: str = "absorbing", schedule: str = "loglinear", predictor: str = "analytic", steps: int = STEPS,
        score_fn=None, clamp: str | None = None, **options) -> torch.Tensor:
    """``ddlm.sampling.sample`` of [BATCH, LENGTH] with seed 1; clamp: None, "prefix", "infill", "suffix" (x_init
    with those positions fixed) or "start" (x_init without fixed: the run starts from it)."""
    graph = oracle(process).graph
    x_init = fixed = None
    if clamp is not None:
        x_init = torch.tensor([[2, 0, 1, 1, 0], [0, 0, 2, 1, 2], [1, 2, 0, 0, 1], [2, 2, 1, 0, 0]])
        if clamp == "start":
            if graph.mask_id is not None:  # start partly masked
                x_init = torch.where(torch.tensor([True, False, True, False, False]), graph.mask_id, x_init)
        else:
            pattern = {"prefix": [1, 1, 0, 0, 0], "infill": [1, 0, 0, 1, 1], "suffix": [0, 0, 0, 1, 1]}[clamp]
            fixed = torch.tensor(pattern, dtype=torch.bool).expand(BATCH, LENGTH).clone()
    return ddlm.sampling.sample(score_fn or oracle(process).score_fn, graph, NOISE[schedule], (BATCH, LENGTH), steps, predictor,
                                generator=torch.Generator().manual_seed(1), x_init=x_init, fixed=fixed, progress=False, **options)


def low_stats(**options) -> torch.Tensor:
    """The tokens of a time-independent oracle run, then its network_calls, sequences_scored and positions_scored."""
    stats = {}
    x = low(score_fn=time_independent(oracle("absorbing").score_fn), stats=stats, **options)
    counts = [stats["network_calls"], stats["sequences_scored"], stats["positions_scored"]]
    return torch.cat([x.flatten(), torch.tensor(counts)])


@functools.cache
def conditional_oracle() -> ConditionalSequenceOracle:
    return ConditionalSequenceOracle.random(ddlm.Absorbing(3), LENGTH, 2, generator=torch.Generator().manual_seed(2))


def guided(kind: str, predictor: str = "analytic") -> torch.Tensor:
    """Classifier-free (scale 2) or classifier (scale 1) guidance towards class 1 of the conditional oracle."""
    co = conditional_oracle()
    if kind == "cfg":
        score_fn = classifier_free_guidance(co.conditional(1).score_fn, co.unconditional.score_fn, 2.0)
    else:
        score_fn = classifier_guidance(co.unconditional.score_fn, co.log_posterior, 1)
    return low(predictor=predictor, score_fn=score_fn)


for process, schedule in [("absorbing", "loglinear"), ("absorbing", "geometric"), ("uniform", "geometric"), ("uniform", "loglinear")]:
    for predictor in ("euler", "tau_leaping", "analytic"):
        case(f"sample/{process}/{schedule}/{predictor}", low, process, schedule, predictor)
        case(f"sample/{process}/{schedule}/{predictor}/impl=reference", low, process, schedule, predictor, impl="reference")
    case(f"sample/{process}/{schedule}/analytic/denoise=False", low, process, schedule, denoise=False, t_min=0.3)
    case(f"sample/{process}/{schedule}/tau_leaping/dtype=float32", low, process, schedule, "tau_leaping", dtype=torch.float32)
for schedule in NOISE:
    case(f"sample/absorbing/{schedule}/first_hitting", low, schedule=schedule, predictor="first_hitting")
case("sample/absorbing/analytic/dtype=float32", low, dtype=torch.float32)
case("sample/absorbing/first_hitting/dtype=float32", low, predictor="first_hitting", dtype=torch.float32)
case("sample/absorbing/first_hitting/denoise=False", low, predictor="first_hitting", denoise=False, t_min=0.3)
case("sample/absorbing/analytic/t_min=0.1", low, t_min=0.1)
case("sample/absorbing/analytic/steps=1", low, steps=1)

# confidence decoding: measures, schedules, threshold (Fast-dLLM), entropy bound (EB-Sampler)
for confidence in ("max_prob", "margin", "entropy", "prob", "random"):
    case(f"sample/absorbing/confidence/{confidence}", low, predictor="confidence", steps=3, confidence=confidence)
case("sample/absorbing/confidence/default", low, predictor="confidence", steps=3)
case("sample/absorbing/confidence/one_per_step", low, predictor="confidence", steps=LENGTH)
case("sample/absorbing/confidence/cosine", low, predictor="confidence", steps=3, unmask_schedule="cosine")
case("sample/absorbing/confidence/random/cosine", low, predictor="confidence", steps=4, confidence="random", unmask_schedule="cosine")
for confidence in ("max_prob", "margin", "prob"):
    case(f"sample/absorbing/confidence/{confidence}/threshold=0.5", low, predictor="confidence", confidence=confidence, threshold=0.5)
case("sample/absorbing/confidence/threshold=0", low, predictor="confidence", threshold=0.0)
for confidence in ("max_prob", "entropy"):
    case(f"sample/absorbing/confidence/{confidence}/entropy_bound=2", low, predictor="confidence", confidence=confidence,
         entropy_bound=2.0)
case("sample/absorbing/confidence/entropy_bound=0", low, predictor="confidence", entropy_bound=0.0)

# reshaping the token a masked position unmasks to: temperature, top_k, top_p, per predictor
for predictor in ("euler", "tau_leaping", "analytic", "first_hitting"):
    case(f"sample/absorbing/geometric/{predictor}/temperature=0.5", low, schedule="geometric", predictor=predictor, temperature=0.5)
case("sample/absorbing/analytic/temperature=0", low, temperature=0.0)
case("sample/absorbing/analytic/temperature=2", low, temperature=2.0)
case("sample/absorbing/analytic/top_k=2", low, top_k=2)
case("sample/absorbing/analytic/top_k=3", low, top_k=3)
case("sample/absorbing/analytic/top_p=0.8", low, top_p=0.8)
case("sample/absorbing/geometric/euler/top_p=0.8", low, schedule="geometric", predictor="euler", top_p=0.8)
case("sample/absorbing/tau_leaping/top_k=2", low, predictor="tau_leaping", top_k=2)
case("sample/absorbing/first_hitting/top_k=2/top_p=0.9", low, predictor="first_hitting", top_k=2, top_p=0.9)
case("sample/absorbing/analytic/temperature=0.8/top_p=0.9", low, temperature=0.8, top_p=0.9)
case("sample/absorbing/geometric/analytic/temperature=0.5/top_k=2", low, schedule="geometric", temperature=0.5, top_k=2)
case("sample/absorbing/confidence/temperature=0.5/top_p=0.9", low, predictor="confidence", steps=3, temperature=0.5, top_p=0.9)
case("sample/absorbing/confidence/temperature=0", low, predictor="confidence", steps=3, temperature=0.0)

# prompts and infill (x_init + fixed), and a start from given tokens (x_init alone)
for predictor in ("euler", "tau_leaping", "analytic", "first_hitting", "confidence"):
    for clamp in ("prefix", "infill"):
        case(f"sample/absorbing/geometric/{predictor}/{clamp}", low, schedule="geometric", predictor=predictor, clamp=clamp)
case("sample/absorbing/analytic/suffix", low, clamp="suffix")
case("sample/absorbing/analytic/x_init", low, clamp="start")
case("sample/absorbing/first_hitting/x_init", low, predictor="first_hitting", clamp="start")
for predictor in ("euler", "tau_leaping", "analytic"):
    case(f"sample/uniform/geometric/{predictor}/infill", low, "uniform", "geometric", predictor, clamp="infill")
case("sample/uniform/geometric/analytic/prefix", low, "uniform", "geometric", clamp="prefix")
case("sample/uniform/geometric/analytic/x_init", low, "uniform", "geometric", clamp="start")
case("sample/absorbing/analytic/infill/impl=reference", low, clamp="infill", impl="reference")
case("sample/uniform/geometric/euler/infill/impl=reference", low, "uniform", "geometric", "euler", clamp="infill", impl="reference")

# correctors: remasking (ReMDM) and predictor-corrector steps
for predictor in ("euler", "tau_leaping", "analytic"):
    case(f"sample/absorbing/{predictor}/remask=0.5", low, predictor=predictor, remask=0.5)
case("sample/absorbing/analytic/remask=1", low, remask=1.0)
case("sample/absorbing/analytic/remask=0.5/window", low, remask=0.5, remask_window=(0.6, 0.1))
case("sample/absorbing/geometric/analytic/remask=0.5", low, schedule="geometric", remask=0.5)
case("sample/absorbing/analytic/remask=0.5/infill", low, remask=0.5, clamp="infill")
case("sample/absorbing/analytic/remask=0.5/temperature=0.5", low, remask=0.5, temperature=0.5)
for predictor in ("euler", "tau_leaping", "analytic"):
    case(f"sample/uniform/geometric/{predictor}/corrector", low, "uniform", "geometric", predictor, corrector_steps=2,
         corrector_size=0.5)
case("sample/uniform/geometric/analytic/corrector/infill", low, "uniform", "geometric", corrector_steps=1, clamp="infill")
case("sample/absorbing/analytic/corrector", low, corrector_steps=2, corrector_size=0.25)
case("sample/absorbing/euler/corrector/remask=0.5", low, predictor="euler", corrector_steps=1, corrector_size=0.5, remask=0.5)

# the exact cache of time-independent score functions: tokens and network-call counts, on and off
for predictor, options in [("analytic", {}), ("euler", {"schedule": "geometric"}), ("first_hitting", {}), ("confidence", {"steps": 3}),
                           ("analytic", {"remask": 0.5}), ("analytic", {"clamp": "infill"})]:
    suffix = "".join(f"/{key}={value}" for key, value in options.items())
    for cache in (None, False):
        case(f"sample/time_independent/{predictor}{suffix}/cache={cache}", low_stats, predictor=predictor, cache=cache, **options)

case("sample/guidance/classifier_free", guided, "cfg")
case("sample/guidance/classifier_free/first_hitting", guided, "cfg", "first_hitting")
case("sample/guidance/classifier", guided, "classifier")


# ----------------------------------------------------------------- DiffusionPipeline on tiny random models
@functools.cache
def pipe(kind: str) -> DiffusionPipeline:
    """A tiny random float64 model of ``kind`` ("absorbing", "uniform", "time_independent", "conditional") with the byte tokenizer."""
    tokenizer = byte_tokenizer()
    options = {"absorbing": {}, "uniform": {"process": "uniform", "schedule": "geometric"},
               "time_independent": {"time_conditioning": False}, "conditional": {"num_classes": 2}}[kind]
    config = ddlm.DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=TEXT_LENGTH, **options)
    return DiffusionPipeline(randomised(config, seed=3).double(), tokenizer)


def pipe_sample(kind: str, predictor: str = "analytic", steps: int = STEPS, **options) -> torch.Tensor:
    return pipe(kind).sample(BATCH, TEXT_LENGTH, steps, predictor, seed=0, progress=False, **options)


def pipe_stats(kind: str, method: str, **options) -> torch.Tensor:
    """The tokens of a pipeline run (``sample`` or ``sample_blocks``), then its network_calls, sequences_scored, positions_scored."""
    stats = {}
    if method == "sample":
        rows = pipe_sample(kind, stats=stats, **options)
    else:
        rows = pipe(kind).sample_blocks(2, 12, 4, 4, seed=0, progress=False, stats=stats, **options)
    counts = [stats["network_calls"], stats["sequences_scored"], stats["positions_scored"]]
    return torch.cat([padded(rows).flatten(), torch.tensor(counts)])


def generate(kind: str, **options) -> torch.Tensor:
    return text_bytes(pipe(kind).generate(2, seed=0, progress=False, **options))


def infill(kind: str, template, **options) -> torch.Tensor:
    return text_bytes(pipe(kind).infill(template, 2, 4, seed=0, progress=False, **options))


def infill_candidates(kind: str, template: str) -> torch.Tensor:
    """The chosen texts, then every candidate's texts, of an unknown-length infill."""
    texts, candidates = pipe(kind).infill(template, 2, 4, num_t=2, return_candidates=True, seed=0, progress=False)
    return text_bytes(texts + [text for candidate in candidates for text in candidate.texts])


def blocks(kind: str, num_samples: int, max_new_tokens: int, block_size: int, **options) -> torch.Tensor:
    return padded(pipe(kind).sample_blocks(num_samples, max_new_tokens, block_size, 4, seed=0, progress=False, **options))


for predictor in ("euler", "tau_leaping", "analytic", "first_hitting", "confidence"):
    case(f"pipe/absorbing/{predictor}", pipe_sample, "absorbing", predictor)
for predictor in ("euler", "tau_leaping", "analytic"):
    case(f"pipe/uniform/{predictor}", pipe_sample, "uniform", predictor)
case("pipe/time_independent/analytic", pipe_sample, "time_independent")
case("pipe/time_independent/first_hitting", pipe_sample, "time_independent", "first_hitting")
case("pipe/absorbing/analytic/batch_size=2", pipe_sample, "absorbing", batch_size=2)
case("pipe/absorbing/analytic/denoise=False", pipe_sample, "absorbing", denoise=False, t_min=0.3)
case("pipe/absorbing/analytic/dtype=float32", pipe_sample, "absorbing", dtype=torch.float32)
case("pipe/absorbing/analytic/temperature=0.8/top_p=0.9", pipe_sample, "absorbing", temperature=0.8, top_p=0.9)
case("pipe/absorbing/first_hitting/top_k=5", pipe_sample, "absorbing", "first_hitting", top_k=5)
case("pipe/absorbing/confidence/max_prob", pipe_sample, "absorbing", "confidence", 4, confidence="max_prob")
case("pipe/absorbing/confidence/threshold=0.9", pipe_sample, "absorbing", "confidence", threshold=0.9)
case("pipe/absorbing/confidence/entropy/entropy_bound=1", pipe_sample, "absorbing", "confidence", confidence="entropy", entropy_bound=1.0)
case("pipe/absorbing/analytic/remask=0.5/window", pipe_sample, "absorbing", remask=0.5, remask_window=(0.6, 0.1))
case("pipe/time_independent/analytic/remask=0.5", pipe_sample, "time_independent", remask=0.5)
case("pipe/uniform/analytic/corrector", pipe_sample, "uniform", corrector_steps=2, corrector_size=0.5)
case("pipe/absorbing/analytic/corrector", pipe_sample, "absorbing", corrector_steps=1, corrector_size=0.5)
for cache in (None, False):
    case(f"pipe/time_independent/analytic/cache={cache}", pipe_stats, "time_independent", "sample", cache=cache)
    case(f"pipe/time_independent/blocks/cache={cache}", pipe_stats, "time_independent", "blocks", prompt_ids=[72, 101], cache=cache)
case("pipe/conditional/label=1", pipe_sample, "conditional", label=1)
case("pipe/conditional/label=0/guidance_scale=2", pipe_sample, "conditional", label=0, guidance_scale=2.0)
case("pipe/conditional/label=1/guidance_scale=0/first_hitting", pipe_sample, "conditional", "first_hitting", label=1,
     guidance_scale=0.0)

case("pipe/absorbing/generate", generate, "absorbing", length=TEXT_LENGTH, steps=STEPS)
case("pipe/absorbing/generate/temperature=0.8/top_p=0.9", generate, "absorbing", steps=STEPS, temperature=0.8, top_p=0.9)
case("pipe/uniform/generate/tau_leaping", generate, "uniform", length=12, steps=STEPS, predictor="tau_leaping")
case("pipe/absorbing/generate/prompt/blocks", generate, "absorbing", prompt="To be", block_size=4, max_new_tokens=9, steps=4)
case("pipe/absorbing/generate/prompt/stop_at_eos", generate, "absorbing", prompt="To be", block_size=8, max_new_tokens=16,
     steps=4, stop_at_eos=True)
case("pipe/absorbing/generate/prompt/one_block", generate, "absorbing", prompt="To be", steps=4, max_new_tokens=8)
case("pipe/absorbing/blocks/sliding_window", blocks, "absorbing", 2, 24, 8)
case("pipe/absorbing/blocks/first_hitting", blocks, "absorbing", 2, 12, 4, predictor="first_hitting", prompt_ids=[72, 101])
case("pipe/absorbing/blocks/confidence/batch_size=1", blocks, "absorbing", 2, 8, 4, predictor="confidence", batch_size=1)
case("pipe/absorbing/blocks/stop_at_eos", blocks, "absorbing", 4, 16, 2, stop_at_eos=True)
case("pipe/absorbing/infill", infill, "absorbing", "To be{{4}} not{{3}}")
case("pipe/absorbing/infill/list", infill, "absorbing", ["To be", 3, " or not", 2])
case("pipe/absorbing/infill/first_hitting", infill, "absorbing", "{{3}} be or{{4}}", predictor="first_hitting")
case("pipe/absorbing/infill/confidence", infill, "absorbing", "To{{4}} not", predictor="confidence")
case("pipe/uniform/infill", infill, "uniform", "To be{{4}} not{{3}}")
case("pipe/time_independent/infill/remask=0.5", infill, "time_independent", "To be{{4}} not", remask=0.5)
case("pipe/absorbing/infill/unknown_length", infill_candidates, "absorbing", "The cat{{2..4}} on the mat.")


def outputs() -> dict[str, list]:
    """Every case's current output as nested lists of ints."""
    return {name: make().tolist() for name, make in CASES}


def write(values: dict[str, list]) -> None:
    """Write the store, one case a line (readable diffs)."""
    lines = [f"  {json.dumps(name)}: {json.dumps(value, separators=(',', ':'))}" for name, value in values.items()]
    STORE.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def stored() -> dict[str, list]:
    return json.loads(STORE.read_text(encoding="utf-8"))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/sampler_outputs.py --write   (stores the current draws of every case)")
    write(outputs())
    print(f"wrote {len(CASES)} cases to {STORE}")
