"""What SFT and LoRA cost per training step, measured against pretraining in the same process.

One training step = loss forward + backward + ``torch.optim.AdamW`` step over the trainable parameters, float32,
dropout 0, on a ``DDLMForDiffusion`` (absorbing, log-linear: the ``tiny`` preset with the widths of ``--shapes``)
whose parameters that start at zero (adaLN-Zero gates, output head) are drawn from N(0, 0.02^2), so that every
layer gets a gradient and LoRA and full fine-tuning do real work. Configurations, at the same shapes:

- ``pretrain``: ``ddlm.training.objective.objective_loss`` with the default train section (``dwdse_loss`` over the
  whole block) -- the baseline of the SFT rows;
- ``sft 1/2``, ``sft 1/4``: the same call with ``prompt_mask`` = the first half (a quarter) of every block, i.e.
  ``ddlm.training.finetune.sft_loss``: the prompt is clamped to its clean tokens and only the response rows reach
  the output head (row-restricted scores, ``positions=``); every parameter trained (full fine-tuning);
- ``lora sft 1/2``: ``sft 1/2`` after ``ddlm.training.lora.add_lora(rank=8, alpha=16)`` on the default targets
  (attention qkv / out, MLP fc1 / fc2): AdamW over the adapters only -- its baseline is ``sft 1/2`` (full
  fine-tuning at the same split).

Throughput: tokens/s = batch x length (every token of the block counted, prompt included) / median step time.
All configurations of a shape live in one process, from the same initial weights, on the same batches; after
``--warmup`` steps each they alternate over ``--rounds`` rounds of ``--steps`` steps (the first one rotating), and
the ratio is the paired one: the median over rounds of (the baseline's mean step time in the round) / (the
configuration's), so load from other processes that lasts a round cancels (> 1: faster than the baseline).

Peak memory of a step, two measures, both above the level just before the first step of a freshly built model
(weights, and for LoRA its adapters, already in memory; no gradients or optimizer state yet), so both include the
gradients, the AdamW moments (of the trainable parameters only) and the activations and temporaries at their peak:

- allocated: the largest total of torch's CPU allocations during that step above its start, from
  ``torch.profiler``'s memory events (exact, in this process);
- RSS: VmHWM - VmRSS (Linux /proc/self/status, the peak mark reset through /proc/self/clear_refs) over the same
  first step, in a fresh Python process per configuration (``--child``, one torch thread) that first runs one
  step of a tiny model of the same kind, so that lazily loaded code and one-off allocations are out of the
  baseline. It is what the operating system sees. The child runs with glibc's mmap threshold fixed at 128 KiB
  (``MALLOC_MMAP_THRESHOLD_``), so that every block from 128 KiB up is mapped on its own and unmapped when freed
  and RSS follows the live tensors; with glibc's default (a threshold that rises to the largest block freed, up to
  32 MiB, after which such blocks stay in the heap) the peak depends on the order of earlier allocations: LoRA's
  step measured 1.2x full fine-tuning's at 128x4 against 0.83x in torch's allocations.

    OMP_NUM_THREADS=1 python benchmarks/finetune_cost.py --threads 1 [--shapes 128x4:4:32 512x8:8:4] [--length 128]
        [--vocab 1024] [--rounds 6] [--steps 1] [--warmup 1]
    python benchmarks/finetune_cost.py --report-only   # the table again from benchmarks/results/finetune_cost_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import harness
import torch
import train_throughput

from ddlm import DDLMConfig, DDLMForDiffusion

NAME = "finetune_cost_cpu"
CONFIGS = ["pretrain", "sft 1/2", "sft 1/4", "lora sft 1/2"]
BASELINE = {"pretrain": "pretrain", "sft 1/2": "pretrain", "sft 1/4": "pretrain", "lora sft 1/2": "sft 1/2"}
PROMPT_SHARE = {"pretrain": None, "sft 1/2": 0.5, "sft 1/4": 0.25, "lora sft 1/2": 0.5}
LORA_RANK, LORA_ALPHA = 8, 16.0
INIT_STD = 0.02  # the std of the parameters a fresh model has at zero
TINY = "32x1:2:2"  # the warm-up model of a --child
MMAP_THRESHOLD = 128 * 1024  # glibc's mmap threshold in a --child, fixed: freed blocks go back to the OS at once


def parse_shape(text: str) -> dict:
    """"HIDDENxLAYERS:HEADS:BATCH" -> {"hidden", "layers", "heads", "batch"}."""
    try:
        widths, heads, batch = text.split(":")
        hidden, layers = widths.split("x")
        shape = {"hidden": int(hidden), "layers": int(layers), "heads": int(heads), "batch": int(batch)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is HIDDENxLAYERS:HEADS:BATCH (e.g. 128x4:4:32), got {text!r}") from None
    if min(shape.values()) < 1 or shape["hidden"] % shape["heads"]:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1 and HIDDEN a multiple of HEADS")
    return shape


def shape_name(shape: dict) -> str:
    return f"{shape['hidden']}x{shape['layers']}:{shape['heads']}:{shape['batch']}"


def model_config(shape: dict, vocab: int, length: int) -> DDLMConfig:
    return DDLMConfig.from_preset("tiny", vocab_size=vocab, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                                  num_attention_heads=shape["heads"], cond_dim=max(16, shape["hidden"] // 2),
                                  max_position_embeddings=length, dropout=0.0)


def initial_state(config: DDLMConfig, seed: int = 0) -> dict:
    """The state dict of a fresh model whose all-zero parameters (adaLN-Zero gates, the head) are drawn from
    N(0, INIT_STD^2): every layer then gets a gradient."""
    torch.manual_seed(seed)
    model = DDLMForDiffusion(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, INIT_STD)
    return model.state_dict()


def batches(shape: dict, vocab: int, length: int, count: int = 2, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (shape["batch"], length), generator=gen) for _ in range(count)]


def prompt_mask(share: float | None, batch: int, length: int) -> torch.Tensor | None:
    """Bool[B, L], True on the first ``share`` of every block (None for pretraining)."""
    if share is None:
        return None
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, : max(1, int(round(share * length)))] = True
    return mask


class Trainer(train_throughput.Trainer):
    """One configuration: its model (from ``state``), loss and AdamW (state only for the parameters that get gradients:
    the adapters under LoRA), stepped and timed as ``benchmarks/train_throughput.py`` does."""

    def __init__(self, name: str, config: DDLMConfig, state: dict, data: list[torch.Tensor]):
        from ddlm.training.objective import objective_loss
        from ddlm.training.recipes import TrainConfig

        model = DDLMForDiffusion(config)
        model.load_state_dict(state)
        if name.startswith("lora"):
            from ddlm.training.lora import add_lora

            add_lora(model, rank=LORA_RANK, alpha=LORA_ALPHA)
        model.train()
        mask = prompt_mask(PROMPT_SHARE[name], *data[0].shape)
        generator, train = torch.Generator().manual_seed(0), TrainConfig()
        super().__init__(model, lambda x0: objective_loss(model, x0, train, model.graph, model.noise, generator, prompt_mask=mask), data)
        self.name = name
        self.parameters = [p for p in model.parameters() if p.requires_grad]


def allocated_peak(trainer: Trainer) -> int:
    """Peak bytes of torch's CPU allocations during one step of ``trainer`` above the level at its start
    (``torch.profiler`` memory events in time order: allocations positive, frees negative)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.step(record=False)
    events = sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(prof.profiler.kineto_results.events())
                    if e.name() == "[memory]")
    level = peak = 0
    for _, _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def proc_status(field: str) -> int:
    """VmRSS or VmHWM of this process, bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def child(name: str, shape: dict, vocab: int, length: int) -> dict:
    """In a fresh process: peak RSS of the first step of configuration ``name`` above the level before it."""
    tiny = parse_shape(TINY)
    tiny_config = model_config(tiny, 64, 16)
    Trainer(name, tiny_config, initial_state(tiny_config), batches(tiny, 64, 16)).step()  # code paths and one-off costs
    gc.collect()
    config = model_config(shape, vocab, length)
    trainer = Trainer(name, config, initial_state(config), batches(shape, vocab, length))
    gc.collect()
    base = proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM to the current RSS
    trainer.step()
    return {"rss_peak": proc_status("VmHWM") - base, "rss_base": base}


def rss_peak(name: str, shape: dict, vocab: int, length: int) -> dict:
    """``child`` run in a fresh Python process with one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    command = [sys.executable, os.path.abspath(__file__), "--threads", "1", "--quiet", "--child", name, shape_name(shape),
               "--vocab", str(vocab), "--length", str(length)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"the memory child of {name} {shape_name(shape)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_shape(shape: dict, args, say) -> dict:
    """Times, allocated peaks and RSS peaks of every configuration at one shape."""
    config = model_config(shape, args.vocab, args.length)
    state, data = initial_state(config), batches(shape, args.vocab, args.length)
    trainers, allocated, first_loss = {}, {}, {}
    for name in args.configs:  # the first step of each is the profiled one, from the same weights and draws
        trainers[name] = Trainer(name, config, state, data)
        allocated[name] = allocated_peak(trainers[name])
        for _ in range(args.warmup):
            first_loss.setdefault(name, trainers[name].step(record=False))
    say(f"{shape_name(shape)}: allocated peak MB " + ", ".join(f"{n} {b / 2**20:.1f}" for n, b in allocated.items()), flush=True)
    by_round = {name: [] for name in trainers}
    began = time.perf_counter()
    for r in range(args.rounds):
        order = list(trainers.values())
        order = order[r % len(order):] + order[: r % len(order)]
        for trainer in order:
            for _ in range(args.steps):
                trainer.step()
            by_round[trainer.name].append(statistics.mean(trainer.times[-args.steps:]))
        say(f"{shape_name(shape)} round {r + 1}/{args.rounds}: "
            + ", ".join(f"{t.name} {by_round[t.name][-1]:.3f}s" for t in trainers.values()), flush=True)
    timed = time.perf_counter() - began
    rows = {}
    for name, trainer in trainers.items():
        rows[name] = {
            "trainable": sum(p.numel() for p in trainer.parameters),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "median_step": statistics.median(trainer.times),
            "round_steps": by_round[name],
            "allocated_peak": allocated[name],
            "warmup_loss": first_loss.get(name),
        }
    del trainers
    gc.collect()
    if args.rss:
        for name in args.configs:
            rows[name].update(rss_peak(name, shape, args.vocab, args.length))
            say(f"{shape_name(shape)} {name}: RSS peak {rows[name]['rss_peak'] / 2**20:.1f} MB", flush=True)
    return {"shape": shape, "tokens": shape["batch"] * args.length, "timed_s": timed, "rows": rows}


def command_line(argv: list[str] | None) -> str:
    shown = list(argv if argv is not None else sys.argv[1:])
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return threads + "python " + " ".join(shlex.quote(a) for a in ["benchmarks/finetune_cost.py", *shown])


def measure(args, argv: list[str] | None = None) -> dict:
    say = print if not args.quiet else (lambda *a, **k: None)
    shapes = [measure_shape(shape, args, say) for shape in args.shapes]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"command": command_line(argv), "load_average": list(load) if load else None, "shapes": shapes}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def paired(rows: dict, name: str, base: str) -> float:
    """Median over rounds of the baseline's step time over the configuration's (> 1: faster than the baseline)."""
    return statistics.median(b / c for b, c in zip(rows[base]["round_steps"], rows[name]["round_steps"]))


def markdown(record: dict) -> str:
    """finetune_cost_cpu.md from its JSON record."""
    settings = record["settings"]
    lines = [
        "# Fine-tuning cost per training step: SFT and LoRA against pretraining (CPU)",
        "",
        f"Machine: {record['machine']}. Load average after the run: "
        + (", ".join(f"{v:.2f}" for v in record["load_average"]) if record.get("load_average") else "n/a") + ".",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Model: `DDLMForDiffusion`, `tiny` preset (absorbing, log-linear) at the widths below, vocabulary "
        f"{settings['vocab']}, block {settings['length']}, float32, dropout 0; the parameters that start at zero "
        f"(adaLN-Zero gates, head) drawn from N(0, {INIT_STD}^2). Step = `objective_loss` forward + backward + AdamW "
        "(lr 1e-4, weight decay 0.01) over the trainable parameters. `sft 1/2` / `sft 1/4`: `prompt_mask` on the first "
        "half / quarter of every block (`sft_loss`: prompt clamped, only the response rows reach the head), every "
        f"parameter trained. `lora sft 1/2`: the same after `add_lora(rank={LORA_RANK}, alpha={LORA_ALPHA:g})` on the "
        "default targets (qkv, out, fc1, fc2), AdamW over the adapters only.",
        "",
        "Baselines: `pretrain` for the SFT rows; full fine-tuning at the same split (`sft 1/2`) for `lora sft 1/2`. "
        "Tokens/s = batch x block (prompt tokens counted) / the median step time. "
        f"The ratios of speed are paired, all configurations of a shape in one process alternating over "
        f"{settings['rounds']} rounds of {settings['steps']} step(s) after {settings['warmup']} warm-up step(s): the "
        "median over rounds of the baseline's step time over the configuration's (> 1: faster).",
        "",
        "Peak memory = the peak of one training step above the level just before it, with the model's weights (and "
        "adapters) in memory and no gradients or optimizer state yet: gradients, AdamW moments (trainable parameters "
        "only), activations and temporaries. *Allocated*: torch's CPU allocations from the profiler's memory events, "
        "in the measuring process. *RSS*: VmHWM - VmRSS over the same first step in a fresh process per "
        "configuration, after a warm-up step of a tiny model of the same kind, with glibc's mmap threshold fixed at "
        f"{MMAP_THRESHOLD // 1024} KiB (`MALLOC_MMAP_THRESHOLD_`: blocks from that size up are unmapped when freed, so RSS "
        "follows the live tensors). Memory ratios are to the row's baseline (< 1: less memory). Where a step's peak "
        "falls in the optimizer step (gradients, AdamW moments and its temporaries; the activations already freed), "
        "SFT and pretraining have the same allocated peak.",
        "",
        "| shape (hidden x layers : heads : batch) | configuration | trainable parameters (M) | tokens/s | × pretraining "
        "| × baseline | peak allocated (MB) | × baseline | peak RSS (MB) | × baseline | baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for entry in record["shapes"]:
        rows, tokens = entry["rows"], entry["tokens"]
        name_of_shape = shape_name(entry["shape"])
        for name, row in rows.items():
            base = BASELINE[name]
            speed_pre = f"{paired(rows, name, 'pretrain'):.2f}" if "pretrain" in rows else "-"
            speed_base = f"{paired(rows, name, base):.2f}" if base in rows else "-"
            rss = row.get("rss_peak")
            base_rss = rows.get(base, {}).get("rss_peak")
            lines.append(
                f"| {name_of_shape} | {name} | {row['trainable'] / 1e6:.3f} | {tokens / row['median_step']:,.0f} | {speed_pre} "
                f"| {speed_base} | {row['allocated_peak'] / 2**20:,.1f} | {ratio(row['allocated_peak'], rows.get(base, {}).get('allocated_peak'))} "
                f"| {'-' if rss is None else f'{rss / 2**20:,.1f}'} | {ratio(rss, base_rss)} | {base} |")
        any_row = next(iter(rows.values()))
        notes.append(f"{name_of_shape}: {any_row['parameters'] / 1e6:.3f}M parameters ({any_row['parameters'] * 4 / 2**20:.1f} MB "
                     f"of float32 weights, not in the peaks), {tokens} tokens a step, timed part {entry['timed_s']:.0f} s.")
    lines += ["", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.parser(__doc__)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[parse_shape("128x4:4:32"), parse_shape("512x8:8:4")],
                        help="HIDDENxLAYERS:HEADS:BATCH per shape (default: 128x4:4:32 512x8:8:4)")
    parser.add_argument("--length", type=int, default=128, help="block length (tokens per sequence)")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS, metavar="CONFIG",
                        help=f"which configurations (default: all of {CONFIGS})")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1, help="steps per configuration per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the profiled first step")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True,
                        help="measure peak RSS in a fresh process per configuration")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "SHAPE"), help=argparse.SUPPRESS)
    args = harness.parse(parser, argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--rounds, --steps and --warmup must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], parse_shape(args.child[1]), args.vocab, args.length)))
        return
    args.shapes = [shape_name(shape) for shape in args.shapes]  # stored as given
    shapes = [parse_shape(text) for text in args.shapes]
    harness.report(NAME, args, lambda: measure(argparse.Namespace(**{**vars(args), "shapes": shapes}), argv), markdown)


if __name__ == "__main__":
    main()
