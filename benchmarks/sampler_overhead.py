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

``--family bert``: the same measurement for a transformers masked LM wrapped by ddlm
(``ddlm.models.masked_lm.wrap_masked_lm``): ``BertForMaskedLM(BertConfig())`` (BERT-base: 768 x 12,
vocabulary 30522, transformers' random init) with a BertTokenizer built here over a 30522-entry
vocabulary laid out like bert-base-uncased's ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103),
so the network reads [CLS] + L free tokens + [SEP]. Absorbing process only; the wrapper is
time-independent, so the sampler's score cache is on by default; each predictor runs with it (the
replayed forwards are the calls that run made) and with ``cache=False``. A restricted run asks the wrapper for the rows it
scores; the wrapper runs BERT's encoder on every position and its output head (``cls``) on those rows only
(``HubMaskedLM``'s ``accepts_rows``). ``--clock cpu`` times with this process's CPU time instead of the wall
clock (one thread: what the work cost, not the time other processes held the cores). Writes
benchmarks/results/sampler_overhead_bert_cpu.json and .md.

    OMP_NUM_THREADS=1 python benchmarks/sampler_overhead.py [--configs tiny128 small] [--repeats 5]
    OMP_NUM_THREADS=1 python benchmarks/sampler_overhead.py --family bert [--configs bert-base] [--repeats 5] [--clock cpu]
    python benchmarks/sampler_overhead.py --report-only   # the table again from sampler_overhead_cpu.json
    python benchmarks/sampler_overhead.py --family bert --report-only   # ... from sampler_overhead_bert_cpu.json
"""

import argparse
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
BERT_CONFIGS = {  # BertConfig fields over BertConfig()'s defaults (BERT-base); bert-tiny checks the script quickly
    "bert-base": dict(config={}, length=128, steps=4),
    "bert-tiny": dict(config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
                      length=16, steps=4),
}
BERT_VOCAB, BERT_SPECIALS = 30522, {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}  # bert-base-uncased's
FAMILIES = {"ddlm": ("sampler_overhead_cpu", CONFIGS), "bert": ("sampler_overhead_bert_cpu", BERT_CONFIGS)}


class Recorder:
    """Wraps the model as a score function that accepts positions, recording every call for replay."""

    accepts_positions = True

    def __init__(self, model):
        self.model, self.calls = model, []
        self.time_independent = getattr(model, "time_independent", False) is True  # the run caches as the model's own does

    def __call__(self, x, sigma, positions=None):
        self.calls.append((x.clone(), sigma.clone(), None if positions is None else positions.clone()))
        return self.model(x, sigma, positions=positions)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # --clock: wall time, or this process's CPU time
clock = CLOCKS["wall"]


def timed(fn):
    start = clock()
    fn()
    return clock() - start


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


def bert_tokenizer():
    """A BertTokenizer over BERT_VOCAB entries: bert-base-uncased's special ids, [unused*] and made-up words elsewhere."""
    from transformers import BertTokenizer

    by_id = {index: name for name, index in BERT_SPECIALS.items()}
    vocab = {by_id.get(i, f"[unused{i}]" if i < 1000 else f"w{i}"): i for i in range(BERT_VOCAB)}
    return BertTokenizer(vocab=vocab, mask_token="[MASK]")


def build_bert(name):
    """(wrapped BertForMaskedLM, free length, steps) for a BERT_CONFIGS entry; transformers' own random init."""
    from transformers import BertConfig, BertForMaskedLM

    from ddlm.models.masked_lm import wrap_masked_lm

    spec = BERT_CONFIGS[name]
    torch.manual_seed(0)
    network = BertForMaskedLM(BertConfig(vocab_size=BERT_VOCAB, **spec["config"])).eval()
    return wrap_masked_lm(network, bert_tokenizer()), spec["length"], spec["steps"]


def shape_of(model):
    """(vocab, hidden, layers) of a ddlm model or a wrapped transformers network."""
    config = model.config
    network = getattr(config, "network_config", None) or config
    return config.vocab_size, config.hidden_size, network.num_hidden_layers


@torch.inference_mode()
def measure_one(name, process, predictor, repeats, quiet=False, cache=None):
    model, length, steps = build_bert(name) if name in BERT_CONFIGS else build(name, process)
    graph, noise = model.graph, model.noise
    x = graph.sample_limit(1, length)
    sigma = torch.full((1,), 1.0, dtype=torch.float64)
    run = lambda impl, fn=model: sample(fn, graph, noise, (1, length), steps, predictor, denoise=False,
                                        generator=torch.Generator().manual_seed(0), impl=impl, progress=False, cache=cache)
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
    vocab, hidden, layers = shape_of(model)
    row = {"network": name, "process": process, "predictor": predictor, "steps": steps, "length": length,
           "vocab": vocab, "hidden": hidden, "layers": layers,
           "forward": forward, **{k: statistics.median(ratios[k]) for k in ("full", "restricted", "actual")},
           "rows_scored": rows_asked}
    if name in BERT_CONFIGS:  # the per-repeat ratios and whether the score cache ran (not in the ddlm table's record)
        row.update(cached=recorder.time_independent if cache is None else cache,
                   repeats={k: ratios[k] for k in ("full", "restricted", "actual")})
    if not quiet:
        print(row, flush=True)
    return row


def measure(args) -> dict:
    """One row per network, process and predictor (the small network runs half the repeats; a masked LM is absorbing only)."""
    processes = ("absorbing", "uniform") if args.family == "ddlm" else ("absorbing",)
    caches = (None,) if args.family == "ddlm" else (None, False)  # a masked LM: the sampler's default (on), and off
    return {"rows": [measure_one(name, process, predictor, args.repeats if name != "small" else max(1, args.repeats // 2),
                                 args.quiet, cache)
                     for name in args.configs for process in processes for cache in caches for predictor in ("euler", "analytic")]}


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


CLOCK_WORDS = {"wall": "wall-clock times", "cpu": "times are this process's CPU time, time.process_time"}


def bert_markdown(record: dict) -> str:
    """sampler_overhead_bert_cpu.md from a sampler_overhead_bert_cpu.json record."""
    args = harness.recorded(record)
    args.clock = getattr(args, "clock", "wall")
    lines = [
        "# Sampler overhead of a BERT-base-shaped masked LM on CPU (one thread)",
        "",
        f"Machine: {record['machine']}, torch.set_num_threads({args.threads}). "
        f"`BertForMaskedLM(BertConfig())` (transformers' random init) wrapped by `ddlm.models.masked_lm.wrap_masked_lm` with a "
        f"locally built {BERT_VOCAB}-entry BertTokenizer (bert-base-uncased's special ids); the network reads [CLS] + L + [SEP]. "
        f"B = 1, absorbing, no final denoise, float64 draws; the score cache as the sampler sets it by default (on: the wrapper "
        "is time-independent, so the network is asked at sigma_bar = log 2 and the sampler applies each step's factor), "
        "and off (the wrapper asked at each step's sigma_bar). A restricted run asks for the rows it scores: BERT's encoder "
        "runs on every position, its output head on those rows only. Command: "
        f"`OMP_NUM_THREADS=1 python benchmarks/sampler_overhead.py --family bert --configs {' '.join(args.configs)} "
        f"--repeats {args.repeats} --clock {args.clock}` ({CLOCK_WORDS[args.clock]}). Ratios are medians over interleaved "
        "repeats; baseline: steps x one bare full forward of the wrapped model (network + ddlm's log-scores) on the same "
        "shape. Target: restricted / fwd <= 1.10x.",
        "",
        "| network | score cache | predictor | steps | L | vocab | forward (s) | full rows / fwd | restricted / fwd | restricted / its fwd | rows scored per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['hidden']}x{r['layers']} ({r['network']}) | {'on' if r['cached'] else 'off'} | {r['predictor']} | "
                     f"{r['steps']} | {r['length']} | "
                     f"{r['vocab']} | {r['forward']:.4f} | {r['full']:.2f}x | {r['restricted']:.2f}x | {r['actual']:.2f}x | "
                     f"{' '.join(map(str, r['rows_scored']))} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--family", choices=list(FAMILIES), default="ddlm",
                        help="ddlm's own models (sampler_overhead_cpu) or a BERT-shaped masked LM (sampler_overhead_bert_cpu)")
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS) + list(BERT_CONFIGS),
                        help=f"networks (default: ddlm {' '.join(CONFIGS)}; bert: bert-base)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="bert family: time wall-clock, or this process's CPU time (one thread: the time it ran, "
                             "robust to other processes sharing the cores)")
    parser.set_defaults(threads=1)  # the ratios are one-thread figures
    args = harness.parse(parser, argv)
    configs = FAMILIES[args.family][1]
    if args.family == "ddlm" and args.clock != "wall":
        parser.error("--clock cpu is for --family bert (the ddlm table is wall-clock)")
    if args.configs is None:
        args.configs = list(configs) if args.family == "ddlm" else ["bert-base"]
    elif any(name not in configs for name in args.configs):
        parser.error(f"--family {args.family} runs {', '.join(configs)}, not {', '.join(n for n in args.configs if n not in configs)}")
    return args


def main():
    args = parse_args()
    if args.family == "ddlm":
        del args.family, args.clock  # the ddlm table's record keeps its settings
        harness.report("sampler_overhead_cpu", args, lambda: measure(argparse.Namespace(**vars(args), family="ddlm")), markdown)
    else:
        global clock
        clock = CLOCKS[args.clock]
        harness.report(FAMILIES[args.family][0], args, lambda: measure(args), bert_markdown)


if __name__ == "__main__":
    main()
