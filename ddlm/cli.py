"""The ``ddlm`` command line.

Building the parser, ``--help`` and argument errors import nothing heavy (no torch, transformers,
datasets or accelerate: ``benchmarks/startup.py`` measures it); each command imports what it needs
when it runs.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time

from .core.choices import CONFIDENCES, PREDICTORS, T_SAMPLING, UNMASK_SCHEDULES

SEPARATOR = "=" * 40


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``ddlm`` help: one line per option ending with its default; descriptions and examples printed as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return [" ".join(text.split())]  # an option's help is never wrapped: one line each

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or "(default" in text or action.default is argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction)):
            return text
        default = action.default
        if isinstance(action, argparse._StoreTrueAction):
            shown = "off"
        elif default is None or default == []:
            shown = "none"
        elif isinstance(default, (list, tuple)):
            shown = " ".join(map(str, default))
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _command(commands, name: str, summary: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose help ends with example command lines."""
    label = "example" if len(examples) == 1 else "examples"
    return commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                               epilog=f"{label}:\n" + "\n".join(f"  {line}" for line in examples), formatter_class=HelpFormatter)


def _checked(parse, ok, expected: str):
    """An argparse type: ``parse(text)``, refused with "expected <expected>, got '<text>'" unless ``ok(value)``."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


# argparse types; a float NaN fails every range test, so it is refused too
positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
at_least_two = _checked(int, lambda v: v >= 2, "an integer >= 2")
even_count = _checked(int, lambda v: v >= 2 and v % 2 == 0, "an even positive integer (t samples come in pairs)")
random_seed = _checked(int, lambda v: 0 <= v < 2**63, "an integer seed in [0, 2^63)")
temperature_value = _checked(float, lambda v: 0 <= v < math.inf, "a finite number >= 0 (0: greedy)")
top_p_value = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
threshold_value = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1) (a confidence above it unmasks)")
entropy_bound_value = _checked(float, lambda v: 0 <= v < math.inf, "a finite number of nats >= 0")
remask_value = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1] (0: off, 1: ReMDM's largest remasking)")
window_time = _checked(float, lambda v: 0 <= v <= 1, "a time in [0, 1]")
corrector_steps_value = _checked(int, lambda v: v >= 0, "an integer >= 0 (0: no corrector)")
corrector_size_value = _checked(float, lambda v: 0 < v < math.inf, "a finite number > 0 (the corrector's dt over the sampler's)")
t_power = _checked(float, lambda v: 1 <= v < math.inf, "a finite number >= 1 (t = u^power)")


DEMO_MAX_SEQUENCES = 10**6  # the demo's oracle enumerates every one of the N^L sequences


DTYPES = ("float32", "bfloat16", "float16")


def torch_device(text: str) -> str:
    """argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps, xpu). Only a device other
    than the CPU imports torch, to ask whether the machine has it."""
    match = re.fullmatch(r"(cpu|cuda|mps|xpu)(?::(\d+))?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"unknown or unsupported device {text!r} (use cpu, cuda, cuda:N or mps)")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return text
    import torch

    backend = torch.backends.mps if kind == "mps" else getattr(torch, kind)
    if not backend.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine (torch sees no {kind} device)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if index is not None and int(index) >= count:
        raise argparse.ArgumentTypeError(f"device {text!r} does not exist: this machine has {count} {kind} device(s)")
    return text


def demo(args: argparse.Namespace) -> None:
    """Sample a known distribution with every predictor and bound its likelihood, against exact answers."""
    import torch

    from . import Absorbing, Geometric, LogLinear, SequenceOracle, Uniform
    from .likelihood.bounds import nll_bound
    from .sampling.loop import ABSORBING_ONLY, PREDICTORS, sample

    if args.tokens ** args.length > DEMO_MAX_SEQUENCES:
        raise ValueError(f"--tokens {args.tokens} and --length {args.length} make {args.tokens}^{args.length} sequences; "
                         f"the exact oracle enumerates them all, so keep N^L <= {DEMO_MAX_SEQUENCES:,}")
    generator = torch.Generator().manual_seed(args.seed)
    setups = {"absorbing": (Absorbing(args.tokens), LogLinear()), "uniform": (Uniform(args.tokens), Geometric())}
    for name, (graph, noise) in setups.items():
        oracle = SequenceOracle.random(graph, args.length, generator)
        exact_tv = oracle.total_variation(oracle.sample(args.samples, generator))
        print(f"\n{name}: {graph!r}, {type(noise).__name__}, a random distribution over {args.tokens}^{args.length} sequences")
        print(f"  total variation of {args.samples} exact draws: {exact_tv:.4f}")
        for predictor in PREDICTORS:
            if predictor in ABSORBING_ONLY and graph.mask_id is None:
                continue  # absorbing only
            start = time.perf_counter()
            x = sample(oracle.score_fn, graph, noise, (args.samples, args.length), args.steps, predictor, generator=generator, progress=False)
            print(f"  {predictor:>11} ({args.steps} steps): TV {oracle.total_variation(x):.4f}  [{time.perf_counter() - start:.1f} s]")
        x0 = oracle.sample(3, generator)
        bound = nll_bound(oracle.score_fn, graph, LogLinear(), x0, num_t=args.num_t, generator=generator, batch_size=3 * args.num_t)
        print(f"  likelihood bound (exact ratios, LogLinear, {args.num_t} stratified t = u^2, default base):")
        for i in range(3):
            true_nll = -oracle.log_prob(x0[i]).item()
            print(f"    {x0[i].tolist()}: bound {bound.bound[i]:.3f} +- {bound.stderr[i]:.3f} nats"
                  f" (integral {bound.integral[i]:.3f}, prior {bound.prior[i]:.4f}); true -log p = {true_nll:.3f}")


def _load(args: argparse.Namespace, path: str | None = None):
    """(model, tokenizer) of ``path`` (default the command's model argument), honouring --tokenizer, --device,
    --dtype, --device-map and --quiet."""
    import torch
    import transformers

    from .evaluation.scoring import load_model, load_tokenizer

    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    return load_model(path or args.model, tokenizer=tokenizer, device=args.device, dtype=dtype, device_map=args.device_map)


def _pipeline(args: argparse.Namespace):
    from .text.pipeline import DiffusionPipeline

    return DiffusionPipeline(*_load(args))


def _sampling_options(args: argparse.Namespace) -> dict:
    options = dict(steps=args.steps, predictor=args.predictor, denoise=not args.no_denoise, batch_size=args.batch_size,
                   seed=args.seed, progress=not args.quiet, cache=False if args.no_cache else None,
                   temperature=1.0 if args.temperature is None else args.temperature, top_k=args.top_k, top_p=args.top_p,
                   confidence=args.confidence, unmask_schedule=args.unmask_schedule, threshold=args.threshold,
                   entropy_bound=args.entropy_bound, remask=args.remask,
                   remask_window=None if args.remask_window is None else tuple(args.remask_window),
                   corrector_steps=args.corrector_steps, corrector_size=args.corrector_size)
    if args.decoding is None:
        if args.remasking is not None:
            raise ValueError("--remasking is an option of --decoding llada")
        return options
    from .sampling.decoding import llada_options

    named = [flag for flag, value in (("--predictor", args.predictor != "analytic"), ("--confidence", args.confidence),
                                      ("--unmask-schedule", args.unmask_schedule), ("--threshold", args.threshold),
                                      ("--entropy-bound", args.entropy_bound)) if value]
    if named:
        raise ValueError(f"--decoding llada sets the predictor, confidence and schedule itself; drop {', '.join(named)}")
    return {**options, **llada_options(args.remasking or "low_confidence", 0.0 if args.temperature is None else args.temperature)}


def sample_command(args: argparse.Namespace) -> None:
    """Print samples of a model: unconditional, or block by block after a prompt (--block-size, --prompt, ...)."""
    blocks = dict(prompt=args.prompt, block_size=args.block_size, max_new_tokens=args.max_new_tokens, stop_at_eos=args.stop_at_eos)
    guidance = dict(label=args.label, guidance_scale=args.guidance_scale)
    texts = _pipeline(args).generate(args.num_samples, args.length, **blocks, **guidance, **_sampling_options(args))
    print(f"\n{SEPARATOR}\n".join(texts))


def chat_command(args: argparse.Namespace) -> None:
    """Print an instruction-tuned model's answers, each block as it is finished: to MESSAGE, or to every line of
    standard input in turn (one conversation)."""
    if args.num_samples != 1:
        raise ValueError("ddlm chat writes one answer per message; drop --num-samples")
    pipe = _pipeline(args)
    options = {**_sampling_options(args), "progress": False}
    options.pop("denoise")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    turns = [args.message] if args.message is not None else (line.rstrip("\n") for line in sys.stdin)
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        answer = pipe.chat(messages, args.max_new_tokens, args.block_size, stream=lambda text: print(text, end="", flush=True),
                           guidance_scale=args.guidance_scale, **options)
        print(flush=True)
        messages.append({"role": "assistant", "content": answer})


def infill_command(args: argparse.Namespace) -> None:
    """Print completions of a template with {{n}} gaps; with {{lo..hi}} gaps also the table of candidate lengths."""
    pipe = _pipeline(args)
    guidance = dict(label=args.label, guidance_scale=args.guidance_scale)
    if not any(isinstance(segment, range) for segment in pipe.parse_template(args.text)):
        texts = pipe.infill(args.text, args.num_samples, **guidance, **_sampling_options(args))
        print(f"\n{SEPARATOR}\n".join(texts))
        return
    texts, candidates = pipe.infill(args.text, args.num_samples, num_t=args.num_t, return_candidates=True, **guidance,
                                    **_sampling_options(args))
    best = min(candidates, key=lambda c: c.per_token)
    print(f"\n{SEPARATOR}\n".join(texts))
    print(SEPARATOR)
    print(f"chosen gap lengths {','.join(map(str, best.lengths))} of {len(candidates)} candidates "
          f"(lowest likelihood bound per token of the whole filled sequence; {args.num_t} t, +- one standard error):")
    print(f"{'':1} {'lengths':>10} {'tokens':>6} {'nats/token':>18}  text")
    for c in candidates:
        print(f"{'*' if c is best else ' '} {','.join(map(str, c.lengths)):>10} {c.num_tokens:>6} "
              f"{c.per_token:>8.4f} +- {c.per_token_stderr:<6.4f}  {c.texts[0]!r}")


def eval_command(args: argparse.Namespace) -> None:
    """Print -log p of each text file under each model in one table: a diffusion model's bound with error
    bars, an AR model's exact value, and each perplexity's ratio to the first model's."""
    import sys

    from .evaluation.scoring import DEFAULT_NUM_T, eval_table, score_texts

    if args.context is not None or args.continuation is not None or args.conditional:
        return conditional_command(args)
    if args.num_t is None and args.estimator == "per-text" and not args.benchmark:
        args.num_t = DEFAULT_NUM_T["per-text"]
    if args.t_sampling != "iid" and args.num_t is not None and args.num_t % 2 and args.estimator != "dataset":
        raise ValueError(f"--num-t must be even for --t-sampling {args.t_sampling} with the per-text estimator (t samples come "
                         f"in pairs; --estimator auto uses it for texts under 16 blocks), got {args.num_t}")
    if bool(args.files) == bool(args.benchmark):
        raise ValueError("give text files or --benchmark NAME..., not both" if args.files else "give text files or --benchmark NAME...")
    if args.benchmark:
        return zero_shot_command(args)
    texts = []
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error})") from None
        if not texts[-1].strip():
            raise ValueError(f"{path} is empty; nothing to score")
    models, per_model = [args.model] + args.compare, []
    for index, name in enumerate(models, 1):
        model, tokenizer = _load(args, name)
        results = score_texts(model, tokenizer, texts, args.num_t, estimator=args.estimator, batch_size=args.batch_size, seed=args.seed,
                              progress=not args.quiet, t_sampling=args.t_sampling, t_power=args.t_power)
        block = model.config.max_position_embeddings
        for path, r in zip(args.files, results):
            if r.num_tokens < block:
                print(f"ddlm eval: warning: {path} has {r.num_tokens} tokens, fewer than model #{index}'s block of {block}; "
                      "scored as one shorter block", file=sys.stderr)
        kind = "AR, exact" if model.config.objective == "ar" else f"{model.config.process} diffusion, bound"
        print(f"#{index}: {name} ({kind}); blocks of {block} tokens")
        per_model.append(results)
    print(eval_table(args.files, per_model, args.t_sampling, args.t_power))


def _conditional_pairs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The (contexts, continuations) of ``ddlm eval --context/--continuation`` or ``--conditional FILE.jsonl``."""
    import json

    if args.files or args.benchmark:
        raise ValueError("give text files, --benchmark NAME..., or --context/--continuation (--conditional FILE): one of them")
    if not args.conditional:
        if args.continuation is None:
            raise ValueError("--context needs --continuation (the text whose -log p given the context is printed)")
        return [args.context or ""], [args.continuation]
    if args.context is not None or args.continuation is not None:
        raise ValueError("give --context/--continuation or --conditional FILE, not both")
    contexts, continuations = [], []
    with open(args.conditional, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{args.conditional} line {number} is not JSON ({error.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("context"), str) or not isinstance(row.get("continuation"), str):
                raise ValueError(f"{args.conditional} line {number} must be an object with string fields \"context\" and \"continuation\"")
            contexts.append(row["context"])
            continuations.append(row["continuation"])
    if not contexts:
        raise ValueError(f"{args.conditional} holds no pairs; write one JSON object per line: {{\"context\": ..., \"continuation\": ...}}")
    return contexts, continuations


def conditional_command(args: argparse.Namespace) -> None:
    """Print -log p(continuation | context) per pair under each model: a diffusion model's conditional bound with
    its standard error, an AR model's exact value, and whether the continuation is the greedy prediction."""
    from .evaluation.scoring import DEFAULT_NUM_T, score_continuations

    contexts, continuations = _conditional_pairs(args)
    num_t = args.num_t or DEFAULT_NUM_T["per-text"]
    if args.t_sampling != "iid" and num_t % 2:
        raise ValueError(f"--num-t must be even for --t-sampling {args.t_sampling} (t samples come in pairs), got {num_t}")
    for index, name in enumerate([args.model] + args.compare, 1):
        model, tokenizer = _load(args, name)
        scores = score_continuations(model, tokenizer, contexts, continuations, num_t, seed=args.seed, batch_size=args.batch_size,
                                     truncate_context=args.truncate_context, progress=not args.quiet,
                                     t_sampling=args.t_sampling, t_power=args.t_power)
        if index == 1:  # after the first model has accepted every pair: an error prints one line and no table
            print(f"{'model':<5} {'pair':>5} {'tokens':>6} {'-log p (nats)':>20} {'nats/token':>16} {'ppl':>10} {'greedy':>6}  continuation")
        for pair, (score, continuation) in enumerate(zip(scores, continuations)):
            greedy = "-" if score.greedy is None else "yes" if score.greedy else "no"
            print(f"{f'#{index}':<5} {pair:>5} {score.tokens:>6} {score.nll:>11.3f} +- {score.stderr:<6.3f} {score.per_token:>7.4f} +- "
                  f"{score.stderr / score.tokens:<6.4f} {score.ppl:>10.3f} {greedy:>6}  {continuation[:40]!r}")
        if len(scores) > 1:
            total, tokens = sum(s.nll for s in scores), sum(s.tokens for s in scores)
            stderr = sum(s.stderr**2 for s in scores) ** 0.5
            hits = [s.greedy for s in scores]
            accuracy = "-" if None in hits else f"{sum(hits) / len(hits):.3f}"
            print(f"{f'#{index}':<5} {'all':>5} {tokens:>6} {total:>11.3f} +- {stderr:<6.3f} {total / tokens:>7.4f} +- "
                  f"{stderr / tokens:<6.4f} {math.exp(total / tokens):>10.3f} {accuracy:>6}  (greedy: fraction of pairs)")
        kind = "AR: exact chain rule after EOS" if model.config.objective == "ar" else \
            f"{model.config.process} diffusion: upper bound, context clamped, {num_t} t per pair, +- one standard error"
        print(f"(#{index} {name}: {kind})")


def zero_shot_command(args: argparse.Namespace) -> None:
    """Print the zero-shot table of ``ddlm eval --benchmark``: per model and benchmark, -log p per token and
    the perplexity (a diffusion model's bound with one standard error, an AR model's exact value); for
    LAMBADA also the last-word accuracy and perplexity."""
    from .evaluation.zero_shot import default_split, evaluate_benchmark, get_benchmark

    requests = [(get_benchmark(name), path or None) for name, _, path in (item.partition("=") for item in args.benchmark)]
    rows = []
    for index, name in enumerate([args.model] + args.compare, 1):
        model, tokenizer = _load(args, name)
        kind = "AR, exact" if model.config.objective == "ar" else f"{model.config.process} diffusion, bound"
        print(f"#{index}: {name} ({kind}); blocks of {model.config.max_position_embeddings} tokens")
        for benchmark, path in requests:
            split = args.split or default_split(benchmark, args.protocol)
            rows.append((index, evaluate_benchmark(
                model, tokenizer, benchmark, args.protocol, args.num_t, estimator=args.estimator, split=split, path=path,
                data_dir=None if path else args.data_dir, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                progress=not args.quiet, t_sampling=args.t_sampling, t_power=args.t_power)))
    print(f"{'model':<5} {'benchmark':<12} {'protocol':<8} {'split':<10} {'blocks':>6} {'tokens':>9} {'t/block':>7} {'estimator':>9}"
          f" {'nats/token':>18} {'ppl':>20} {'last-word acc':>13} {'last-word ppl':>20}")
    for index, r in rows:
        word = r.last_word
        acc = "-" if word is None or word["accuracy"] is None else f"{word['accuracy']:.4f}"
        ppl = "-" if word is None else f"{word['ppl']:.3f} +- {word['ppl'] * word['stderr']:.3f}"
        print(f"{f'#{index}':<5} {r.benchmark:<12} {r.protocol:<8} {r.split:<10} {r.num_blocks:>6} {r.num_tokens:>9}"
              f" {r.num_t or 'exact':>7} {r.estimator:>9} {r.per_token:>8.4f} +- {r.stderr / r.num_tokens:<6.4f}"
              f" {r.ppl:>10.3f} +- {r.ppl_stderr:<7.3f} {acc:>13} {ppl:>20}")
    print(f"({args.protocol} protocol; diffusion: upper bound, +- one standard error; per-text: t/block times for every block, "
          "dataset: t/block times per block stratified over the benchmark's blocks, the error taken across blocks; "
          "docs/how-to/zero-shot.md states each protocol's rules)")


def quality_command(args: argparse.Namespace) -> None:
    """Print sample-quality metrics of a diffusion model per predictor and number of steps."""
    from .text.pipeline import DiffusionPipeline
    from .evaluation.sample_quality import load_reference, mauve_score, reference_metrics, sample_metrics

    model, tokenizer = _load(args)
    human_text = None
    if args.mauve is not None:
        try:
            import mauve  # noqa: F401
        except ImportError:
            raise ValueError("--mauve needs the mauve-text package: pip install mauve-text (or pip install 'ddlm[eval]')") from None
        with open(args.mauve, encoding="utf-8") as f:
            human_text = f.read()
    reference = load_reference(args.reference, device=args.device)
    same_ids = reference.ddlm and reference.tokenizer.get_vocab() == tokenizer.get_vocab()
    pipe = DiffusionPipeline(model, tokenizer)
    length = pipe.max_length if args.length is None else args.length
    if length > pipe.max_length:
        raise ValueError(f"--length {length} exceeds the model's maximum length {pipe.max_length}")
    eos = tokenizer.eos_token_id
    how = ("the samples' token ids, every token scored, the first after EOS" if same_ids else
           f"the samples decoded and re-tokenised, windows of {reference.window} tokens; first token and EOS after the first unscored")
    print(f"{args.num_samples} samples of {length} tokens; generative perplexity under {args.reference} ({how})")
    print(f"{'predictor':>12} {'steps':>6} {'gen. ppl':>10} {'entropy':>8} {'distinct-2':>10} {'distinct-4':>10}"
          + (f" {'MAUVE':>8}" if human_text is not None else ""))
    for predictor in args.predictors:
        for steps in args.steps:
            ids = pipe.sample(args.num_samples, length, steps, predictor, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
            m = (sample_metrics(reference.model, ids, eos, args.batch_size) if same_ids else
                 reference_metrics(reference, ids.cpu(), tokenizer, args.batch_size))
            row = f"{predictor:>12} {steps:>6} {m['gen_ppl']:>10.2f} {m['entropy']:>8.4f} {m['distinct_2']:>10.4f} {m['distinct_4']:>10.4f}"
            if human_text is not None:
                row += f" {mauve_score(reference, [pipe.decode(r) for r in ids.cpu()], human_text, seed=args.seed):>8.4f}"
            print(row)
    print("(entropy: mean unigram entropy of a sample's own tokens, nats; distinct-n over all samples; the same seed for every row)")


def convert_command(args: argparse.Namespace) -> None:
    """Import an official SEDD or MDLM checkpoint as a ddlm model directory (with a tokenizer if given)."""
    from .evaluation.scoring import load_tokenizer
    from .models.mdlm import convert_mdlm, is_mdlm_source
    from .models.sedd import convert_sedd, local_source
    from .text.pipeline import DiffusionPipeline

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    family = args.format or ("mdlm" if is_mdlm_source(local_source(args.source, "a checkpoint directory or file")) else "sedd")
    convert = convert_mdlm if family == "mdlm" else convert_sedd
    model = convert(args.source, args.out, ema=not args.no_ema, config=args.config)
    if tokenizer is not None:
        DiffusionPipeline(model, tokenizer).save_pretrained(args.out)  # checks the vocabulary matches
    config = model.config
    print(f"wrote {args.out}: {config.process} process over {config.vocab_size} tokens, {config.schedule} schedule, "
          f"{config.num_hidden_layers} x {config.hidden_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
          + ("" if tokenizer is not None else "; no tokenizer saved (pass --tokenizer, e.g. gpt2 for SEDD and MDLM-OWT)"))


def train_command(args: argparse.Namespace) -> None:
    """Train per a recipe (under ``accelerate launch`` for several processes)."""
    from .training.recipes import load_recipe
    from .training.loop import train

    named = {item.partition("=")[0] for item in args.overrides}  # what a resume may change: what the user named
    # prints "exported DIR" from the main process only (under accelerate launch every process runs this)
    train(load_recipe(args.recipe, args.overrides), resume=args.resume, progress=not args.quiet, allow_changes=named)


def _add_model_arguments(p: argparse.ArgumentParser, batch_default: str = "all at once") -> None:
    p.add_argument("model", help="a model directory or hub id: a ddlm model, a transformers masked LM, MDLM (or its .ckpt), "
                   "LLaDA or Dream")
    p.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model directory's own)")
    p.add_argument("--device", type=torch_device, default=None, help="torch device: cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="load the weights in this dtype (default: as saved); "
                   "bfloat16 halves an open-weight model's memory")
    p.add_argument("--device-map", choices=("auto",), default=None, help="spread the weights over the available devices "
                   "(needs accelerate; instead of --device) (default: one device)")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"sequences per model call (default: {batch_default})")
    p.add_argument("--seed", type=random_seed, default=0, help="random seed: the same seed gives the same output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-samples", type=positive_int, default=1, help="texts to generate")
    p.add_argument("--steps", type=positive_int, default=128, help="sampling steps (first_hitting ignores it: one network "
                   "call per masked position)")
    p.add_argument("--predictor", choices=PREDICTORS, default="analytic",
                   help="reverse step; first_hitting (exact, one token at a time) and confidence (the most confident "
                   "first, not exact) need an absorbing model")
    p.add_argument("--temperature", type=temperature_value, default=None, help="draw an unmasked token from p(x0 | x_t)^(1/T); "
                   "0: greedy, 1: the model's distribution (absorbing models) (default: 1; 0 with --decoding llada)")
    p.add_argument("--top-k", type=positive_int, default=None, help="draw unmasked tokens from the k most likely only "
                   "(absorbing models) (default: off)")
    p.add_argument("--top-p", type=top_p_value, default=1.0, help="draw unmasked tokens from the smallest set holding this "
                   "probability; 1: off (nucleus; absorbing models)")
    p.add_argument("--confidence", choices=CONFIDENCES, default=None, help="--predictor confidence: how positions are ranked "
                   "(prob: the drawn token's, LLaDA; all but prob are exact at one position a step) (default: max_prob)")
    p.add_argument("--unmask-schedule", choices=UNMASK_SCHEDULES, default=None, help="--predictor confidence: how many positions stay "
                   "masked after each of --steps steps: linear, cosine, or even (LLaDA: n // steps a step, the remainder to "
                   "the first steps) (default: linear)")
    p.add_argument("--decoding", choices=("llada",), default=None, help="a published decoding as one setting: llada is LLaDA's "
                   "generate() token for token (confidence predictor, low-confidence remasking, even schedule, temperature 0; "
                   "with --block-size; --steps counts per block: LLaDA's steps x block size / new tokens)")
    p.add_argument("--remasking", choices=("low_confidence", "random"), default=None, help="--decoding llada: LLaDA's remasking "
                   "rule (default: low_confidence)")
    p.add_argument("--threshold", type=threshold_value, default=None, help="--predictor confidence: unmask every position "
                   "more confident than this, at least one a step; --steps unused (Fast-dLLM) (default: off)")
    p.add_argument("--entropy-bound", type=entropy_bound_value, default=None, help="--predictor confidence: unmask the most "
                   "confident positions while their entropies sum to at most this many nats, at least one; --steps unused "
                   "(EB-Sampler) (default: off)")
    p.add_argument("--remask", type=remask_value, default=0.0, metavar="ETA", help="remask unmasked tokens with probability "
                   "ETA times ReMDM's largest before each step; exact marginals, no extra calls (absorbing; grid predictors)")
    p.add_argument("--remask-window", type=window_time, nargs=2, default=None, metavar=("T_HI", "T_LO"),
                   help="remask only in steps starting at a time t in [T_LO, T_HI] (default: every step)")
    p.add_argument("--corrector-steps", type=corrector_steps_value, default=0, metavar="N", help="corrector steps after each "
                   "predictor step, one network call each; p_t-invariant (any model; grid predictors)")
    p.add_argument("--corrector-size", type=corrector_size_value, default=1.0, metavar="F",
                   help="corrector step length as a fraction of the sampler's time step")
    p.add_argument("--no-denoise", action="store_true", help="skip the final denoising step")
    p.add_argument("--no-cache", action="store_true", help="call the network at every step even for a time-independent "
                   "model (the cache gives the same samples with fewer calls)")


def _add_demo_command(commands) -> None:
    """``ddlm demo`` and its options."""
    p = _command(commands, "demo", "samplers and likelihood bound against an exact oracle (CPU, seconds)",
                 ["ddlm demo --samples 5000 --steps 64"])
    p.add_argument("--tokens", type=at_least_two, default=3, help="real tokens N of the toy distribution")
    p.add_argument("--length", type=positive_int, default=3, help="sequence length L")
    p.add_argument("--samples", type=positive_int, default=20_000, help="samples per predictor")
    p.add_argument("--steps", type=positive_int, default=128, help="sampling steps")
    p.add_argument("--num-t", type=even_count, default=1024, help="t samples of the likelihood bound (even)")
    p.add_argument("--seed", type=random_seed, default=0, help="random seed")
    p.set_defaults(run=demo)


def _add_sample_command(commands) -> None:
    """``ddlm sample`` and its options."""
    p = _command(commands, "sample", "samples of a model: unconditional, or block by block after a prompt",
                 ["ddlm sample runs/quickstart/final --num-samples 4 --steps 256 --seed 0",
                  'ddlm sample runs/quickstart/final --prompt "The" --block-size 32 --max-new-tokens 96 --stop-at-eos',
                  "ddlm sample runs/conditional/final --label 1 --guidance-scale 2 --num-samples 4"])
    _add_model_arguments(p)
    _add_sampling_arguments(p)
    p.add_argument("--length", type=positive_int, default=None, help="tokens per sample (default: the model's maximum)")
    p.add_argument("--block-size", type=positive_int, default=None, help="semi-autoregressive blocks of this many tokens, left to "
                   "right (absorbing models) (default: off; with --prompt or --max-new-tokens one block if all fits the model, "
                   "else half its length)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="tokens to generate block by block; beyond the "
                   "model's length the window slides (default: --length, else the model's maximum)")
    p.add_argument("--stop-at-eos", action="store_true", help="stop a sample after the block with its first EOS token and cut "
                   "the text there")
    p.add_argument("--prompt", default=None, help="text to continue block by block, printed unchanged")
    _add_guidance_arguments(p, "--prompt")
    p.set_defaults(run=sample_command)


def _add_chat_command(commands) -> None:
    """``ddlm chat`` and its options."""
    p = _command(commands, "chat", "answers of an instruction-tuned model (its chat template), streamed block by block",
                 ['ddlm chat GSAI-ML/LLaDA-8B-Instruct "What is a Markov chain?" --dtype bfloat16 --device cuda --decoding llada',
                  "ddlm chat MODEL < questions.txt"])
    _add_model_arguments(p)
    _add_sampling_arguments(p)
    p.add_argument("message", nargs="?", default=None, help="the user's message (default: each line of standard input in "
                   "turn, one conversation)")
    p.add_argument("--system", default=None, help="a system message before the conversation")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="the longest answer, in tokens")
    p.add_argument("--block-size", type=positive_int, default=32, help="tokens decoded per block; each is printed when done")
    p.add_argument("--guidance-scale", type=float, default=1.0, metavar="G", help="guidance on the conversation so far "
                   "(masked for the unconditional part: LLaDA's cfg_scale is G - 1); 1: off")
    p.set_defaults(run=chat_command, steps=None)


def _add_guidance_arguments(p: argparse.ArgumentParser, condition: str) -> None:
    """--label and --guidance-scale, checked against the model when it is loaded (one-line errors, exit 2)."""
    p.add_argument("--label", type=int, default=None, help="class to generate, for a class-conditional model "
                   "(default: none, the unconditional model)")
    p.add_argument("--guidance-scale", type=float, default=1.0, metavar="G", help="classifier-free guidance: "
                   "log s = G log s(condition) + (1 - G) log s(no condition); the condition is --label for a "
                   f"class-conditional model, else {condition} (masked for the unconditional part: LLaDA's cfg_scale is "
                   "G - 1); 1: the conditional model, > 1: stronger (not an exact sampler)")


def _add_infill_command(commands) -> None:
    """``ddlm infill`` and its options."""
    p = _command(commands, "infill", "fill the {{n}} gaps (n tokens each) or {{lo..hi}} gaps (best length) of a text",
                 ['ddlm infill runs/quickstart/final "The{{4}} of the module{{8}}" --num-samples 3',
                  'ddlm infill runs/quickstart/final "Return the{{2..6}} of the list." --num-t 32'])
    _add_model_arguments(p)
    p.add_argument("text", help='for example "The cat{{4}} on the mat.{{8}}" or "The cat{{2..6}} on the mat."')
    _add_sampling_arguments(p)
    p.add_argument("--num-t", type=even_count, default=64, help="t samples of the likelihood bound that ranks the lengths of "
                   "{{lo..hi}} gaps (even)")
    _add_guidance_arguments(p, "the given text")
    p.set_defaults(run=infill_command)


def _add_eval_command(commands) -> None:
    """``ddlm eval`` and its options."""
    p = _command(commands, "eval", "perplexity of text files: a diffusion model's bound with error bars, an AR model's exact value",
                 ["ddlm eval runs/quickstart/final held-out.txt",
                  "ddlm eval runs/quickstart/final held-out.txt --estimator per-text --num-t 128",
                  "ddlm eval runs/quickstart/final --context 'The cat sat on the' --continuation ' mat'",
                  "ddlm eval runs/quickstart/final --conditional pairs.jsonl --compare AR_MODEL",
                  "ddlm eval AR_MODEL held-out.txt ptb.valid.txt --compare ABSORBING_MODEL UNIFORM_MODEL",
                  "ddlm eval sedd-small --benchmark lambada wikitext2 ptb wikitext103 lm1b --protocol sedd"])
    _add_model_arguments(p, batch_default="as many as fit in a quarter of the free memory, at most 512 MiB of work on a CPU")
    p.add_argument("files", nargs="*", help="UTF-8 text files; each is scored whole, in blocks of the model's length")
    p.add_argument("--benchmark", nargs="+", default=[], metavar="NAME[=PATH]", help="zero-shot benchmarks instead of files: "
                   "lambada wikitext2 wikitext103 ptb lm1b ag_news pubmed arxiv, from the hub or NAME=PATH local files (default: none)")
    p.add_argument("--protocol", choices=["sedd", "mdlm"], default="sedd", help="--benchmark blocks: sedd (documents joined "
                   "with EOS, blocks of the model's length) or mdlm ([BOS] chunk [EOS] blocks; LM1B one block per sentence)")
    p.add_argument("--data-dir", default=None, help="--benchmark: local files DIR/NAME/ or DIR/NAME.* in the hub's formats "
                   "(.parquet/.jsonl/.json/.txt) instead of the hub (default: the hub)")
    p.add_argument("--split", default=None, help="--benchmark: the split to score (default: the protocol's paper's)")
    p.add_argument("--limit", type=positive_int, default=None, help="--benchmark: score only the first N blocks (default: all)")
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                   help="more models (diffusion or AR) to score the same files in the same table, with ppl ratios to MODEL "
                   "(default: none)")
    p.add_argument("--num-t", type=positive_int, default=None, help="t samples per block, or per pair with --context/--conditional "
                   "(diffusion models; even unless --t-sampling iid or the dataset estimator) (default: 128; 1 for the dataset estimator)")
    p.add_argument("--estimator", choices=["auto", "per-text", "dataset"], default="auto", help="files: per-text (--num-t t for every "
                   "block), dataset (--num-t t per block stratified over all a file's blocks; 1/128 of the "
                   "model calls at the defaults) or auto (dataset for files of at least 16 blocks)")
    p.add_argument("--context", default=None, help="score --continuation given this text instead of files (default: none)")
    p.add_argument("--continuation", default=None, help="the text whose -log p given --context is printed (default: none)")
    p.add_argument("--conditional", default=None, metavar="FILE.jsonl", help="score many pairs: one JSON object per line with "
                   "string fields \"context\" and \"continuation\" (default: none)")
    p.add_argument("--truncate-context", action="store_true", help="--context/--conditional: keep a context's last tokens when "
                   "context + continuation exceed the model's length (otherwise an error)")
    p.add_argument("--t-sampling", choices=T_SAMPLING, default="stratified", help="how u in (0, 1] is drawn for the t integral")
    p.add_argument("--t-power", type=t_power, default=2.0, help="t = u^power, a finite number >= 1 (1: t uniform)")
    p.set_defaults(run=eval_command)


def _add_quality_command(commands) -> None:
    """``ddlm quality`` and its options."""
    p = _command(commands, "quality", "sample quality per predictor and steps: generative perplexity under a causal LM, entropy, distinct-n",
                 ["ddlm quality MODEL --reference AR_MODEL --predictors euler analytic --steps 16 64 256 --num-samples 32",
                  "ddlm quality MODEL --reference gpt2-large --steps 128 --mauve held-out.txt"])
    _add_model_arguments(p)
    p.add_argument("--reference", required=True, help="a causal LM with its tokenizer (transformers directory or hub id, e.g. "
                   "gpt2-large), or an AR model trained by ddlm")
    p.add_argument("--mauve", metavar="FILE", default=None, help="also MAUVE against this held-out UTF-8 text, featurised by "
                   "the reference (needs the mauve-text package) (default: off)")
    p.add_argument("--predictors", nargs="+", choices=PREDICTORS, default=[p for p in PREDICTORS if p not in ("first_hitting", "confidence")],
                   help="predictors to compare (first_hitting ignores --steps and needs an absorbing model)")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[16, 64, 256], help="numbers of sampling steps to compare")
    p.add_argument("--num-samples", type=positive_int, default=32, help="samples per setting")
    p.add_argument("--length", type=positive_int, default=None, help="tokens per sample (default: the model's maximum)")
    p.set_defaults(run=quality_command)


def _add_train_command(commands) -> None:
    """``ddlm train`` and its options."""
    p = _command(commands, "train", "train per a recipe (also: accelerate launch -m ddlm train RECIPE)",
                 ["ddlm train quickstart", "ddlm train quickstart train.steps=300 model.hidden_size=96",
                  "ddlm train --resume quickstart train.steps=3000", "accelerate launch -m ddlm train sedd-small-owt",
                  "ddlm train sft.yaml   # a recipe with a finetune section: SFT, LoRA, adaptation of an AR model"])
    p.add_argument("recipe", help="a recipe name in recipes/ (quickstart, sedd-small-owt, ...) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides, e.g. train.steps=100")
    p.add_argument("--resume", action="store_true", help="continue from the output directory's newest intact checkpoint; "
                   "recipe values named as overrides may change (steps, learning-rate schedule, intervals)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=train_command)


def _add_convert_command(commands) -> None:
    """``ddlm convert`` and its options."""
    p = _command(commands, "convert", "import a checkpoint of another toolkit",
                 ["ddlm convert sedd louaaron/sedd-small sedd-small --tokenizer gpt2",
                  "ddlm convert mdlm kuleshov-group/mdlm-owt mdlm-owt --tokenizer gpt2"])
    p.add_argument("format", nargs="?", choices=["sedd", "mdlm"],
                   help="sedd: the official SEDD release (hub directory, run .pth or hub id); mdlm: MDLM (hub directory as "
                        "kuleshov-group/mdlm-owt, Lightning .ckpt or hub id); left out: mdlm for an MDLM source (a .ckpt, "
                        "or config.json with model_type 'mdlm'), else sedd")
    p.add_argument("source", help="a hub directory (config.json + weights), a run's checkpoint .pth/.ckpt, or a hub id")
    p.add_argument("out", help="directory to write the ddlm model to")
    p.add_argument("--tokenizer", help="tokenizer to save beside the model (SEDD, MDLM-OWT: gpt2)")
    p.add_argument("--no-ema", action="store_true", help="a .pth/.ckpt's raw weights instead of its EMA weights")
    p.add_argument("--config", help="run config (.yaml/.json) of a .pth/.ckpt (default: <run>/.hydra/config.yaml)")
    p.set_defaults(run=convert_command)


def build_parser() -> argparse.ArgumentParser:
    """The ``ddlm`` argument parser (the docs' CLI reference is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="ddlm", description="Discrete diffusion language models (score entropy).", formatter_class=HelpFormatter,
        epilog="examples:\n  ddlm demo\n  ddlm train quickstart\n  ddlm sample runs/quickstart/final --num-samples 4\n\n"
               "`ddlm COMMAND --help` lists a command's options, each with its default.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo_command, _add_sample_command, _add_chat_command, _add_infill_command, _add_eval_command, _add_quality_command, _add_train_command, _add_convert_command):
        add(commands)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that recipe overrides may also follow ``ddlm train``'s options
    (``ddlm train quickstart --resume train.steps=3000``): argparse stops filling a positional list
    after an option, so the leftover ``section.key=value`` words join ``overrides``."""
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in word and not word.startswith("-") for word in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        args.run(args)
    except (ValueError, OSError, FloatingPointError) as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())  # one line, always
        parser.exit(2, f"ddlm {args.command}: error: {message or type(error).__name__}\n")
