"""Sampler overhead: ``ddlm.sampling.sample`` wall time over the bare forward passes it drives.

For each process (absorbing, uniform) and predictor (euler, analytic), one sequence of L tokens,
``steps`` steps, no final denoise (so a full-row run makes exactly ``steps`` forwards):

- full rows / fwd: the landed full-row path (``impl="reference"``: every position scored,
  float64 exponential races over [B, L, S]) / (steps x one full forward);
- restricted / fwd: the row-restricted sampler (``impl="torch"``) / (steps x one full forward);
- restricted / its fwd: the same run / the forwards it actually ran (absorbing: the head only on
  masked rows, and no forward once nothing is masked), replayed and timed on their own.

Same process, interleaved repeats, one thread, medians of ratios (DESIGN.md §6). Random weights
(every parameter ~ N(0, 0.02^2)); the cost of a forward does not depend on them.

Writes benchmarks/results/sampler_overhead_cpu.json and .md (one thread unless --threads says otherwise).

    OMP_NUM_THREADS=1 python benchmarks/sampler_overhead.py [--configs tiny128 small] [--repeats 5]
    python benchmarks/sampler_overhead.py --report-only   # the table again from sampler_overhead_cpu.json
"""

import statistics
import time

import harness
import torch

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.sampling import sample

CONFIGS = {
    "tiny128": dict(preset=None, vocab_size=1024, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, length=128, steps=16),
    "small": dict(preset="small", vocab_size=50257, length=128, steps=4),
}


class Recorder:
    """Wraps the model as a score function that accepts positions, recording every call for replay."""

    accepts_positions = True

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, sigma, positions=None):
        self.calls.append((x.clone(), sigma.clone(), None if positions is None else positions.clone()))
        return self.model(x, sigma, positions=positions)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build(name, process):
    spec = dict(CONFIGS[name])
    preset, length, steps = spec.pop("preset"), spec.pop("length"), spec.pop("steps")
    config = DDLMConfig.from_preset(preset, process=process, dropout=0.0, **spec) if preset else DDLMConfig(process=process, dropout=0.0, **spec)
    torch.manual_seed(0)
    model = DDLMForDiffusion(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model, length, steps


@torch.inference_mode()
def measure_one(name, process, predictor, repeats, quiet=False):
    model, length, steps = build(name, process)
    graph, noise = model.graph, model.noise
    x = graph.sample_limit(1, length)
    sigma = torch.full((1,), 1.0, dtype=torch.float64)
    run = lambda impl, fn=model: sample(fn, graph, noise, (1, length), steps, predictor, denoise=False,
                                        generator=torch.Generator().manual_seed(0), impl=impl, progress=False)
    run("torch"), run("reference"), model(x, sigma)  # warm up
    ratios = {"full": [], "restricted": [], "actual": []}
    rows_asked = []
    for _ in range(repeats):
        forward = min(timed(lambda: model(x, sigma)) for _ in range(2))
        full = timed(lambda: run("reference"))
        restricted = timed(lambda: run("torch"))
        recorder = Recorder(model)
        run("torch", recorder)
        replay = sum(timed(lambda c=c: model(c[0], c[1], positions=c[2])) for c in recorder.calls)
        rows_asked = [int(c[2].sum()) if c[2] is not None else length for c in recorder.calls]
        ratios["full"].append(full / (steps * forward))
        ratios["restricted"].append(restricted / (steps * forward))
        ratios["actual"].append(restricted / replay)
    row = {"network": name, "process": process, "predictor": predictor, "steps": steps, "length": length,
           "vocab": model.config.vocab_size, "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers,
           "forward": forward, **{k: statistics.median(ratios[k]) for k in ("full", "restricted", "actual")},
           "rows_scored": rows_asked}
    if not quiet:
        print(row, flush=True)
    return row


def measure(args) -> dict:
    """One row per network, process and predictor (the small network runs half the repeats)."""
    return {"rows": [measure_one(name, process, predictor, args.repeats if name != "small" else max(1, args.repeats // 2),
                                 args.quiet)
                     for name in args.configs for process in ("absorbing", "uniform") for predictor in ("euler", "analytic")]}


def markdown(record: dict) -> str:
    """sampler_overhead_cpu.md from a sampler_overhead_cpu.json record."""
    args = harness.recorded(record)
    lines = [
        "# Sampler overhead on CPU (one thread)",
        "",
        f"Machine: {record['machine']}, torch.set_num_threads({args.threads}). B = 1, no final denoise, float64 draws. Command: "
        f"`OMP_NUM_THREADS=1 python benchmarks/sampler_overhead.py --configs {' '.join(args.configs)} --repeats {args.repeats}` "
        "(the small network runs half the repeats). Ratios are medians over interleaved repeats; baseline: steps x one bare "
        "full forward of the same model on the same shape.",
        "",
        "| network | process | predictor | steps | L | vocab | forward (s) | full rows / fwd (before) | restricted / fwd (after) | restricted / its fwd | rows scored per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['hidden']}x{r['layers']} ({r['network']}) | {r['process']} | {r['predictor']} | {r['steps']} | "
                     f"{r['length']} | {r['vocab']} | {r['forward']:.4f} | {r['full']:.2f}x | {r['restricted']:.2f}x | "
                     f"{r['actual']:.2f}x | {' '.join(map(str, r['rows_scored']))} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.set_defaults(threads=1)  # the ratios are one-thread figures
    return harness.parse(parser, argv)


def main():
    args = parse_args()
    harness.report("sampler_overhead_cpu", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
