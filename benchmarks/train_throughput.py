"""Training throughput on CPU: the diffusion objective and the AR baseline against HF GPT-2.

One training step = forward + loss + backward + ``torch.optim.AdamW`` step, float32, dropout 0,
``torch.set_num_threads`` = the cores this process may use. Candidates, all in one process:

- ``ddlm_diffusion``: ``DDLMForDiffusion`` with an absorbing LogLinear config (SEDD's setting)
  trained with ``ddlm.losses.dwdse_loss(model, model.graph, model.noise, x0, generator=...)``
  (mean over the batch; the DSE backend is ``--impl``, "auto" = the row-chunked torch backend on CPU);
- ``ddlm_ar``: the same network with ``objective="ar"`` (causal attention, no mask state)
  trained with ``ddlm.losses.ar_loss``;
- ``gpt2``: ``transformers.GPT2LMHeadModel`` of the same width, depth, heads, vocabulary and
  ``n_positions`` = sequence length, SDPA attention, loss from ``labels=input_ids`` -- the baseline.

After ``--warmup`` steps each, the candidates alternate over ``--rounds`` rounds of
``--steps`` steps; the reported time is the median step time, tokens/s = batch * length / that,
and the ratio is to GPT-2 in the same process (> 1 is faster). On a shared machine the load
changes between rounds, so the table also gives the paired ratio: the median over rounds of
(GPT-2's mean step time in the round) / (the candidate's), which cancels load that lasts a
round. ``--profile N`` then runs N profiled steps of each candidate under ``torch.profiler`` and
prints / records the top ops by self CPU time. ``--tie --append`` adds a run with tied ddlm
embeddings (as GPT-2's) to the same file.
Writes benchmarks/results/train_throughput_cpu.md (``--out`` to change) itself: it takes the harness's
arguments and machine header but stores no JSON, so it has no ``--report-only``.

    python benchmarks/train_throughput.py [--hidden 256 --layers 4 --heads 4 --length 256
        --batch 4 --vocab 50257 --rounds 7 --steps 2 --warmup 2 --profile 3]

``--loss-paths`` instead compares the ways ``ddlm train`` can compute the same diffusion loss
(``train.loss_impl`` standard / inplace / fused_head, and ``train.compile``), each step made by
``ddlm.train.objective_loss`` as the training loop makes it: peak memory of a step (allocations
above the step's start, from the profiler's memory events) and tokens/s, as ratios to the
standard path in one process, on a small body (the head and the loss over 50k states are then
nearly all of the step's memory) and a section "Memory-fused and compiled training steps" in --out
(replaced if there, the rest kept):

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --loss-paths --hidden 64 --layers 1 --heads 2
        --batch 4 --length 512 --rounds 3 --steps 2 --warmup 1 --threads 1

Default shapes: GPT-2's vocabulary (50257) with a small body (256 x 4 layers, 4 heads of 64)
and 1024 tokens a step (4 x 256). At this size the output head and the loss over 50k states
dominate the step -- the regime in which the two objectives differ (the DSE loss against
log_softmax + cross-entropy) -- while one step still takes about a second on 2 cores, so the
whole run (3 models, warm-up, 7 rounds, profile) fits in a few minutes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time

import harness
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.core.losses import ar_loss, dwdse_loss


def command_line(argv) -> str:
    """The command as run, less --note (quoted under "Conditions")."""
    given, shown = list(argv if argv is not None else sys.argv[1:]), []
    while given:
        arg = given.pop(0)
        if arg == "--note":
            given = given[1:]
        elif not arg.startswith("--note="):
            shown.append(arg)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return threads + "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *shown])


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build(args):
    """name -> (model, step function x0 -> scalar loss); same width, depth, heads and vocabulary."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                 num_attention_heads=args.heads, max_position_embeddings=args.length, dropout=0.0,
                 tie_word_embeddings=args.tie)
    diffusion = DDLMForDiffusion(DDLMConfig(process="absorbing", schedule="loglinear", **sizes)).train()
    ar = DDLMForDiffusion(DDLMConfig(objective="ar", **sizes)).train()
    gpt2_config = GPT2Config(vocab_size=args.vocab, n_positions=args.length, n_embd=args.hidden, n_layer=args.layers,
                             n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    gpt2 = GPT2LMHeadModel._from_config(gpt2_config, attn_implementation="sdpa").train()
    gpt2.loss_type = "ForCausalLM"  # what transformers falls back to anyway, without its warning
    generator = torch.Generator().manual_seed(0)

    def diffusion_loss(x0):
        return dwdse_loss(diffusion, diffusion.graph, diffusion.noise, x0, generator=generator, impl=args.impl).mean()

    return {
        "ddlm_diffusion": (diffusion, diffusion_loss),
        "ddlm_ar": (ar, lambda x0: ar_loss(ar, x0)),
        "gpt2": (gpt2, lambda x0: gpt2(input_ids=x0, labels=x0).loss),
    }


class Trainer:
    def __init__(self, model, loss_fn, batches):
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        self.count = 0
        self.times: list[float] = []

    def step(self, record: bool = True) -> float:
        x0 = self.batches[self.count % len(self.batches)]
        self.count += 1
        start = time.perf_counter()
        loss = self.loss_fn(x0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"non-finite loss {float(loss)}")
        if record:
            self.times.append(elapsed)
        return float(loss.detach())


def profile(trainer: Trainer, steps: int, top: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(record=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)


LOSS_PATHS_TITLE = "## Memory-fused and compiled training steps"


def step_peak_bytes(trainer: "Trainer") -> int:
    """Peak bytes allocated during one training step above the level at its start (CPU allocations, from
    the profiler's memory events in time order: forward, backward and the optimizer step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.step(record=False)
    events = sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(prof.profiler.kineto_results.events()) if e.name() == "[memory]")
    level = peak = 0
    for _, _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def loss_paths(args, command: str) -> None:
    """The --loss-paths comparison (see the module docstring)."""
    say = print if not args.quiet else (lambda *a, **k: None)
    from ddlm.training.recipes import TrainConfig
    from ddlm.training.objective import objective_loss

    torch.manual_seed(0)
    config = DDLMConfig(process="absorbing", schedule="loglinear", vocab_size=args.vocab, hidden_size=args.hidden,
                        num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=args.length,
                        dropout=0.0, tie_word_embeddings=args.tie)
    initial = DDLMForDiffusion(config).state_dict()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(args.vocab, (args.batch, args.length), generator=gen) for _ in range(4)]
    candidates = [("standard", False), ("inplace", False), ("fused_head", False)] + ([("standard", True)] if args.compile else [])
    trainers, compile_s, first_losses = {}, {}, {}
    for impl, compiled in candidates:
        name = f"{impl} + compile" if compiled else impl
        model = DDLMForDiffusion(config).train()
        model.load_state_dict(initial)
        step_model = torch.compile(model) if compiled else model
        train_cfg = TrainConfig(loss_impl=impl)
        generator = torch.Generator().manual_seed(0)

        def loss_fn(x0, model=model, step_model=step_model, train_cfg=train_cfg, generator=generator):
            return objective_loss(step_model, x0, train_cfg, model.graph, model.noise, generator, head=model)

        trainers[name] = Trainer(model, loss_fn, batches)
        began = time.perf_counter()
        first_losses[name] = trainers[name].step(record=False)  # the first step of each starts from the same weights and draws
        compile_s[name] = time.perf_counter() - began
        for _ in range(args.warmup - 1):
            trainers[name].step(record=False)
        say(f"warmed up {name} (first step {compile_s[name]:.1f} s, loss {first_losses[name]:.6f})", flush=True)
    peaks = {name: step_peak_bytes(trainer) for name, trainer in trainers.items()}
    say("peak MB: " + ", ".join(f"{n} {b / 2**20:.0f}" for n, b in peaks.items()), flush=True)
    began = time.perf_counter()
    by_round = {name: [] for name in trainers}
    for r in range(args.rounds):
        order = list(trainers.items())
        order = order[r % len(order):] + order[: r % len(order)]
        for name, trainer in order:
            for _ in range(args.steps):
                trainer.step()
            by_round[name].append(statistics.mean(trainer.times[-args.steps:]))
        say(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t.times[-1]:.3f}s" for n, t in trainers.items()), flush=True)
    timed = time.perf_counter() - began
    tokens = args.batch * args.length
    median = {name: statistics.median(t.times) for name, t in trainers.items()}
    paired = {name: statistics.median(s / c for s, c in zip(by_round["standard"], by_round[name])) for name in trainers}
    reference = first_losses["standard"]
    rows = [f"| {name} | {peaks[name] / 2**20:,.0f} | {peaks[name] / peaks['standard']:.2f} | {median[name]:.3f} "
            f"| {tokens / median[name]:,.0f} | {median['standard'] / median[name]:.2f} | {paired[name]:.2f} "
            f"| {abs(first_losses[name] - reference) / abs(reference):.1e} |" for name in trainers]
    table = "\n".join(["| path | peak step memory (MB) | memory ratio | median step (s) | tokens/s | tokens/s ratio "
                       "| paired ratio | first-step loss, relative difference |", "|---|---|---|---|---|---|---|---|", *rows])
    say(table, flush=True)
    grads_mb = sum(p.numel() for p in trainers["standard"].model.parameters()) * 4 / 2**20
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    compile_note = ""
    if args.compile:
        compile_note = (f" `standard + compile` is `torch.compile` (inductor) of the model, as `train.compile: true` does; "
                        f"its first step, which compiles, took {compile_s['standard + compile']:.0f} s "
                        f"(the eager first step {compile_s['standard']:.1f} s) and is not timed.")
    lines = [
        LOSS_PATHS_TITLE,
        "",
        f"Machine: {harness.machine()}. Load average after the run: " + (", ".join(f"{v:.2f}" for v in load) if load else "n/a") + ".",
        "",
        f"Shapes: batch {args.batch} x length {args.length} = {tokens} tokens a step; vocabulary {args.vocab} "
        f"({args.vocab + 1} absorbing states); hidden {args.hidden}, {args.layers} layer(s), {args.heads} heads: a small "
        "body, so that the output head and the loss are nearly all of the step's memory; float32, dropout 0, AdamW.",
        "",
        "Protocol: each path is `train.loss_impl` (and `train.compile`) of `ddlm train`: the step calls "
        "`ddlm.train.objective_loss` as the training loop does, then backward and AdamW. All paths in one process, "
        "from the same initial weights; the first step of each uses the same batch and generator seed, so its loss is "
        "the same number up to float rounding (last column). Peak step memory: the largest total of CPU allocations "
        "during one step (forward, backward, optimizer) above the level at its start, from `torch.profiler`'s "
        f"memory events (it includes the parameters' gradients, {grads_mb:.0f} MB, recreated every step). Then "
        f"{args.rounds} rounds of {args.steps} steps, the paths alternating; median step time; tokens/s ratio = the "
        "path's over the standard path's (> 1 is faster); paired ratio = median over rounds of the standard path's "
        f"mean step time over the path's. Timed part: {timed:.0f} s.{compile_note}",
        "",
        f"Command: `{command}`",
        "",
    ]
    if args.note:
        lines += [f"Conditions: {args.note}", ""]
    lines += [table, ""]
    section = "\n".join(lines)
    previous = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    if LOSS_PATHS_TITLE in previous:  # replace the section (up to the next one of its level), keep the rest
        head, rest = previous.split(LOSS_PATHS_TITLE, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = head.rstrip("\n") + "\n\n" + section.rstrip("\n") + ("\n" + tail if tail else "\n")
    else:
        text = previous.rstrip("\n") + "\n\n" + section if previous else section
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    if not args.quiet:
        print(f"wrote {args.out}")


def main(argv=None):
    parser = harness.parser(__doc__)
    parser.set_defaults(threads=available_cores())  # default: the cores this process may use
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="steps per candidate per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--impl", default="auto", help="the DSE backend of the diffusion loss (auto, eager, torch)")
    parser.add_argument("--tie", action="store_true", help="tie the ddlm embeddings to the head (GPT-2 always ties)")
    parser.add_argument("--profile", type=int, default=3, help="profiled steps of each candidate (0: none)")
    parser.add_argument("--note", default="", help="a line about the conditions (other load on the machine, ...)")
    parser.add_argument("--append", action="store_true", help="add this run to --out instead of replacing it")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="the Markdown file (default: RESULTS/train_throughput_cpu.md)")
    parser.add_argument("--loss-paths", action="store_true",
                        help="compare train.loss_impl standard / inplace / fused_head (and --compile) instead; see the docstring")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="with --loss-paths: add the compiled standard path (inductor; its first step compiles)")
    args = harness.parse(parser, argv)
    if args.report_only:  # it writes its Markdown itself (append mode, sections): there is no JSON to rebuild it from
        parser.error("--report-only: train_throughput.py stores no JSON; its tables are written by its runs only")
    args.out = args.out or pathlib.Path(args.results) / "train_throughput_cpu.md"
    say = print if not args.quiet else (lambda *a, **k: None)
    tokens = args.batch * args.length
    if args.loss_paths:
        loss_paths(args, command_line(argv))
        return

    models = build(args)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(args.vocab, (args.batch, args.length), generator=gen) for _ in range(4)]
    trainers = {name: Trainer(model, loss_fn, batches) for name, (model, loss_fn) in models.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in models.items()}
    say(f"{args.batch} x {args.length} tokens a step, vocab {args.vocab}, hidden {args.hidden} x {args.layers} layers, "
          f"{args.heads} heads, {args.threads} threads; parameters: "
          + ", ".join(f"{name} {n / 1e6:.2f}M" for name, n in params.items()), flush=True)

    began = time.perf_counter()
    for name, trainer in trainers.items():
        for _ in range(args.warmup):
            trainer.step(record=False)
        say(f"warmed up {name}", flush=True)
    by_round = {name: [] for name in trainers}
    for r in range(args.rounds):
        order = list(trainers.items())
        order = order[r % len(order):] + order[: r % len(order)]  # rotate who goes first
        for name, trainer in order:
            for _ in range(args.steps):
                trainer.step()
            by_round[name].append(statistics.mean(trainer.times[-args.steps:]))
        say(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t.times[-1]:.3f}s" for n, t in trainers.items()), flush=True)

    median = {name: statistics.median(t.times) for name, t in trainers.items()}
    spread = {name: (min(t.times), max(t.times)) for name, t in trainers.items()}
    rate = {name: tokens / m for name, m in median.items()}
    paired = {name: statistics.median(g / c for g, c in zip(by_round["gpt2"], by_round[name])) for name in trainers}
    rows = [f"| {name} | {params[name] / 1e6:.2f} | {median[name]:.3f} | {spread[name][0]:.3f} - {spread[name][1]:.3f} "
            f"| {rate[name]:,.0f} | {rate[name] / rate['gpt2']:.2f} | {paired[name]:.2f} |" for name in trainers]
    table = "\n".join(["| candidate | parameters (M) | median step (s) | min - max (s) | tokens/s | ratio to gpt2 "
                       "| paired ratio to gpt2 |", "|---|---|---|---|---|---|---|", *rows])
    say(table, flush=True)

    profiles = {}
    if args.profile:
        for name in ("ddlm_diffusion", "ddlm_ar", "gpt2"):
            profiles[name] = profile(trainers[name], args.profile)
            say(f"\nprofile of {name} ({args.profile} steps, self CPU time):\n{profiles[name]}", flush=True)

    command = command_line(argv)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    title = "# Training throughput, CPU: diffusion (DWDSE) and AR objectives against HF GPT-2"
    if args.append:
        title = f"## Run: {'tied' if args.tie else 'untied'} ddlm embeddings, DSE backend `{args.impl}`"
    lines = [
        title,
        "",
        f"Machine: {harness.machine()}, Python {platform.python_version()}. Load average after the run: "
        + (", ".join(f"{v:.2f}" for v in load) if load else "n/a") + ".",
        "",
        f"Shapes: batch {args.batch} x length {args.length} = {tokens} tokens a step; vocabulary {args.vocab} "
        f"(the absorbing model has {args.vocab + 1} states); hidden {args.hidden}, {args.layers} layers, "
        f"{args.heads} heads; float32, dropout 0; AdamW (lr 1e-4, weight decay 0.01); DSE backend `{args.impl}`; "
        f"ddlm embeddings {'tied' if args.tie else 'untied (the ddlm / SEDD default; GPT-2 ties them)'}.",
        "",
        f"Protocol: all three in one process; {args.warmup} warm-up steps each, then {args.rounds} rounds of "
        f"{args.steps} steps each, the candidates alternating (the first one rotating); median step time over the "
        f"{args.rounds * args.steps} timed steps of a candidate. Step = loss forward + backward + optimizer step. "
        "Ratio = tokens/s over GPT-2's (> 1 is faster); paired ratio = median over rounds of GPT-2's mean step time "
        "in the round over the candidate's (robust to load that changes between rounds). Wall time of the timed part: "
        f"{time.perf_counter() - began:.0f} s.",
        "",
        f"Command: `{command}`",
        "",
    ]
    if args.note:
        lines += [f"Conditions: {args.note}", ""]
    lines += [table, ""]
    for name, text in profiles.items():
        lines += [f"{'####' if args.append else '##'} Profile: {name} ({args.profile} steps, top ops by self CPU time)", "", "```", text.rstrip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    if args.append and args.out.exists():
        text = args.out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text
    args.out.write_text(text, encoding="utf-8")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
