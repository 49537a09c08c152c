"""Generation frontier: sample quality against network calls and wall-clock for every sampler and setting.

Three models of the ``benchmarks/quality.py`` kind (128 x 4 blocks, byte-level BPE of 1024 tokens,
quality.py's training text, batch, schedule and recipe, ``--steps`` steps each): an absorbing
diffusion model conditioned on the noise level ("absorbing"), a time-independent one
(``model.time_conditioning: false``, "absorbing_ti"; same size, data and tokens) and the AR model
that scores the samples (generative perplexity). They live in ``--work`` (runs/sampling); models
found there are reused, an interrupted training resumes.

For each setting it draws ``--num-samples`` sequences of ``--length`` tokens in one batch and
reports: generative perplexity under the AR model with its 2-standard-error interval over the
samples (exp of the mean per-sample NLL per token +- 2 SE), unigram entropy per sample (mean +-
2 SE), distinct-2/4 over all samples, network calls (score-function calls for the whole
batch; the cache skips calls and, within a call, sequences that did not change) and
wall-clock. The baseline is ``analytic`` with 1024 steps on the time-conditioned model. A row
"reaches the baseline" when its generative perplexity and entropy lie within two standard
errors of the baseline's (the two intervals' half-widths combined in quadrature).

It writes benchmarks/results/sampling.md, sampling.json and sampling_frontier.png (generative
perplexity and entropy against network calls).

    python benchmarks/sampling.py --threads 1  # trains what is missing, then the sweep (see results/sampling.md for the time)
    python benchmarks/sampling.py --quick      # smoke run of the whole pipeline in runs/sampling-quick; results/ untouched
    python benchmarks/sampling.py --device cuda
    python benchmarks/sampling.py --report-only  # rewrite sampling.md and the PNG from sampling.json (no runs)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import quality  # noqa: E402  (the models, data split and recipes of quality.py)
from corpora import add_data_dir_argument, corpus  # noqa: E402

from ddlm.core.losses import ar_nll  # noqa: E402
from ddlm.evaluation import load_model  # noqa: E402
from ddlm.evaluation.sample_quality import ar_sample, distinct_n, unigram_entropies  # noqa: E402
from ddlm.text.pipeline import DiffusionPipeline  # noqa: E402
from ddlm.text.tokenization import train_byte_bpe  # noqa: E402
from ddlm.training.loop import FINAL, latest_checkpoint, train  # noqa: E402
from ddlm.training.recipes import recipe_from_dict  # noqa: E402

BASELINE = ("absorbing", "analytic 1024")


def settings(args) -> list[tuple[str, str, str, dict]]:
    """(family, model, label, sampler options) of every row, the baseline first."""
    rows = [("analytic", "absorbing", "analytic 1024", dict(steps=1024, predictor="analytic"))]
    for model in ("absorbing", "absorbing_ti"):
        for steps in args.grid_steps:
            if (model, steps) != ("absorbing", 1024):
                rows.append(("analytic", model, f"analytic {steps}", dict(steps=steps, predictor="analytic")))
        rows.append(("first hitting", model, "first_hitting", dict(predictor="first_hitting")))
    rows.append(("first hitting", "absorbing_ti", "first_hitting, no cache", dict(predictor="first_hitting", cache=False)))
    rows.append(("analytic", "absorbing_ti", "analytic 256, no cache", dict(steps=256, predictor="analytic", cache=False)))
    for eta in args.remask:
        for steps in args.remask_steps:
            rows.append(("remasking", "absorbing_ti", f"analytic {steps} + remask {eta:g}",
                         dict(steps=steps, predictor="analytic", remask=eta)))
    length = args.length
    for confidence in ("max_prob", "margin", "entropy", "prob", "random"):
        for steps in args.confidence_steps:
            if steps <= length:
                rows.append((f"confidence {confidence}", "absorbing_ti", f"{confidence}, {length // steps}/step ({steps} steps)",
                             dict(steps=steps, predictor="confidence", confidence=confidence)))
    for threshold in args.thresholds:
        rows.append(("threshold", "absorbing_ti", f"threshold {threshold:g}", dict(steps=1, predictor="confidence", threshold=threshold)))
    for bound in args.entropy_bounds:
        rows.append(("entropy bound", "absorbing_ti", f"entropy bound {bound:g}", dict(steps=1, predictor="confidence", entropy_bound=bound)))
    for label, opts in (("top_p 0.9", dict(top_p=0.9)), ("temperature 0.9", dict(temperature=0.9))):
        rows.append(("reshaped", "absorbing_ti", f"first_hitting, {label}", dict(predictor="first_hitting", **opts)))
    return rows


def ensure_models(work: Path, args) -> None:
    """Train (or resume) the AR, absorbing and time-independent absorbing models that the work dir lacks."""
    train_docs, heldout = quality.split_articles(corpus(args.data_dir, "wikitext2.valid.txt").read_text(encoding="utf-8"), 0.9)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "train.jsonl").is_file():
        (work / "train.jsonl").write_text("".join(json.dumps({"text": doc}) + "\n" for doc in train_docs))
        (work / "heldout.txt").write_text(heldout, encoding="utf-8")
    if not (work / "tokenizer" / "tokenizer.json").is_file():
        train_byte_bpe(train_docs, 1024).save_pretrained(work / "tokenizer")
    for name in ("ar", "absorbing", "absorbing_ti"):
        run = work / name
        if (run / FINAL / "config.json").is_file():
            continue
        recipe = quality.recipe("absorbing" if name == "absorbing_ti" else name, work, args)
        recipe["train"]["output_dir"] = str(run)
        if name == "absorbing_ti":
            recipe["model"]["time_conditioning"] = False
        start = time.perf_counter()
        resume = latest_checkpoint(run) is not None
        train(recipe_from_dict(recipe), resume=resume, progress=not args.quiet)
        (run / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "resumed": resume}))


def per_sample_quality(reference, ids: torch.Tensor, eos: int) -> dict:
    """Generative perplexity and entropy with 2-SE intervals over the samples, distinct-2/4."""
    nll = torch.cat([ar_nll(reference, chunk.to(next(reference.parameters()).device), context=eos).cpu()
                     for chunk in ids.split(64)]) / ids.shape[1]
    entropy = unigram_entropies(ids)
    n = ids.shape[0]
    nll_se, entropy_se = float(nll.std() / math.sqrt(n)), float(entropy.std() / math.sqrt(n))
    mean_nll = float(nll.mean())
    return {"gen_ppl": math.exp(mean_nll), "gen_ppl_low": math.exp(mean_nll - 2 * nll_se), "gen_ppl_high": math.exp(mean_nll + 2 * nll_se),
            "nll": mean_nll, "nll_se": nll_se, "entropy": float(entropy.mean()), "entropy_se": entropy_se,
            "distinct_2": distinct_n(ids, 2), "distinct_4": distinct_n(ids, 4)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sweep(work: Path, args) -> dict:
    device = torch.device(args.device or "cpu")
    models, tokenizer = {}, None
    for name in ("ar", "absorbing", "absorbing_ti"):
        models[name], tokenizer = load_model(work / name / FINAL, device=device)
    reference, eos = models["ar"], tokenizer.eos_token_id
    n, length = args.num_samples, args.length
    heldout = (work / "heldout.txt").read_text(encoding="utf-8")
    ids = tokenizer(heldout)["input_ids"]
    blocks = torch.tensor([ids[i:i + length] for i in range(0, len(ids) - length + 1, length)][:n])
    out = {"references": {
        "held-out text": per_sample_quality(reference, blocks, eos),
        "AR samples": per_sample_quality(reference, ar_sample(reference, n, length, eos, generator=torch.Generator(device).manual_seed(0),
                                                              device=device).cpu(), eos)}, "rows": [], "failed": []}
    pipes = {name: DiffusionPipeline(models[name], tokenizer) for name in ("absorbing", "absorbing_ti")}
    pipes["absorbing"].sample(n, length, 4, progress=False, seed=0)  # warm-up (allocator, kernels)
    for family, model, label, options in settings(args):
        stats = {}
        options = {"steps": 1, **options}
        synchronize(device)
        start = time.perf_counter()
        try:
            samples = pipes[model].sample(n, length, seed=0, progress=False, stats=stats, **options)
        except Exception as error:  # noqa: BLE001 -- one failing sampler is reported, the sweep goes on
            if (model, label) == BASELINE:
                raise
            out["failed"].append({"model": model, "label": label, "error": f"{type(error).__name__}: {error}"})
            print(f"{model} {label}: FAILED {out['failed'][-1]['error']}", flush=True)
            continue
        synchronize(device)
        seconds = time.perf_counter() - start
        row = {"family": family, "model": model, "label": label, "options": options, "seconds": seconds,
               "network_calls": stats["network_calls"], "sequences_scored": stats["sequences_scored"], "positions_scored": stats["positions_scored"], "cache": stats["cache"],
               **per_sample_quality(reference, samples.cpu(), eos)}
        out["rows"].append(row)
        if not args.quiet:
            print(f"{model:13s} {label:40s} calls {row['network_calls']:5d}  {seconds:7.2f} s  gen ppl {row['gen_ppl']:8.2f}  "
                  f"entropy {row['entropy']:.3f}", flush=True)
    return out


def reaches(row: dict, base: dict) -> bool:
    """Generative perplexity (in log space) and entropy within two combined standard errors of the baseline's."""
    nll_ok = abs(row["nll"] - base["nll"]) <= 2 * math.hypot(row["nll_se"], base["nll_se"])
    entropy_ok = abs(row["entropy"] - base["entropy"]) <= 2 * math.hypot(row["entropy_se"], base["entropy_se"])
    return nll_ok and entropy_ok


def halving_costs(rows: list[dict]) -> dict[str, float | None]:
    """Per parallel-decoding family: the least-squares slope of log generative perplexity against
    log2(network calls), sign-flipped, i.e. the relative rise in generative perplexity per 2x fewer
    calls; None where the family's calls span less than a factor 2 (nothing to fit)."""
    costs = {}
    families = {r["family"] for r in rows if r["family"].startswith("confidence") or r["family"] in ("threshold", "entropy bound")}
    for family in sorted(families):
        points = [(math.log2(r["network_calls"]), r["nll"]) for r in rows if r["family"] == family]
        xs = [p[0] for p in points]
        if max(xs) - min(xs) < 1:
            costs[family] = None
            continue
        mx = sum(xs) / len(points)
        my = sum(p[1] for p in points) / len(points)
        slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
        costs[family] = math.expm1(-slope)
    return costs


def own_baseline(rows: list[dict], row: dict) -> dict:
    """The analytic 1024-step row of the same model: what a row's quality is compared with."""
    return next(r for r in rows if (r["model"], r["label"]) == (row["model"], "analytic 1024"))


def markdown(result: dict) -> str:
    """sampling.md from a sampling.json record."""
    args, rows, refs = harness.recorded(result), result["rows"], result["references"]
    base = next(r for r in rows if (r["model"], r["label"]) == BASELINE)
    trained = ", ".join(f"{name} {t['seconds'] / 60:.0f} min" for name, t in result.get("training", {}).items())
    lines = [
        f"Models trained {args.steps} steps × 32 × {args.block_size} tokens each ({trained}). "
        f"{args.num_samples} samples of {args.length} tokens per setting, one batch, seed 0; models of the `benchmarks/quality.py` "
        f"kind (absorbing: time-conditioned; absorbing_ti: `time_conditioning: false`, same size, data and tokens); generative "
        f"perplexity under the AR model trained alongside, with the 2-SE interval over samples; entropy: unigram entropy per sample "
        f"(nats, ± 2 SE); calls: score-function calls for the batch; forwards / sample: sequences passed to them per sample (the cache passes only the sequences that changed); time: wall-clock of the batch. Baseline: "
        f"`analytic` 1024 steps on the time-conditioned model (the × columns). ✓: generative perplexity and entropy within 2 "
        f"combined SE of the same model's `analytic` 1024 row (the two models differ in quality, so each is compared with "
        f"its own). Machine: {result['machine']}. Command: `python benchmarks/sampling.py"
        f"{' --device ' + args.device if args.device else ''}{f' --threads {args.threads}' if args.threads else ''}`.",
        "",
        "| model | sampler | calls | × baseline calls | forwards / sample | time (s) | × baseline time | gen. ppl [± 2 SE] | entropy ± 2 SE | distinct-2 | distinct-4 | ✓ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in refs.items():
        lines.append(f"| {name} | | | | | | | {m['gen_ppl']:.1f} [{m['gen_ppl_low']:.1f}, {m['gen_ppl_high']:.1f}] | "
                     f"{m['entropy']:.3f} ± {2 * m['entropy_se']:.3f} | {m['distinct_2']:.3f} | {m['distinct_4']:.3f} | |")
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['label']} | {r['network_calls']} | {r['network_calls'] / base['network_calls']:.3f} | "
            f"{r['sequences_scored'] / args.num_samples:.0f} | "
            f"{r['seconds']:.2f} | {r['seconds'] / base['seconds']:.3f} | {r['gen_ppl']:.1f} [{r['gen_ppl_low']:.1f}, "
            f"{r['gen_ppl_high']:.1f}] | {r['entropy']:.3f} ± {2 * r['entropy_se']:.3f} | {r['distinct_2']:.3f} | "
            f"{r['distinct_4']:.3f} | {'✓' if reaches(r, own_baseline(rows, r)) else ''} |")
    for failure in result["failed"]:
        lines.append(f"| {failure['model']} | {failure['label']} | failed: {failure['error']} | | | | | | | | | |")
    lines += ["", "Generative perplexity per 2× fewer network calls (least-squares slope of log gen. ppl against log2 calls "
              "over each parallel-decoding family's rows; +0.10 means 10 % higher perplexity each time the calls halve):", "",
              "| strategy | gen. ppl rise per 2× fewer calls |", "|---|---|"]
    for family, cost in halving_costs(rows).items():
        calls = sorted({r["network_calls"] for r in rows if r["family"] == family})
        span = f"{calls[0]}–{calls[-1]}" if len(calls) > 1 else str(calls[0])
        lines.append(f"| {family} (calls {span}) | " + (f"{cost:+.3f} |" if cost is not None else
                                                        "— (calls did not change by 2× across its settings) |"))
    lines += ["", "![generative perplexity and entropy against network calls](sampling_frontier.png)"]
    return "\n".join(lines) + "\n"


def write_plot(result: dict, out: Path) -> None:
    """sampling_frontier.png in ``out``, from a sampling.json record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, refs = result["rows"], result["references"]
    base = next(r for r in rows if (r["model"], r["label"]) == BASELINE)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    families = sorted({(r["family"], r["model"]) for r in rows})
    markers = {"absorbing": "o", "absorbing_ti": "s"}
    colors = plt.get_cmap("tab20").colors
    for key, ax, ylabel in (("gen_ppl", axes[0], "generative perplexity (AR reference)"), ("entropy", axes[1], "unigram entropy (nats)")):
        for i, (family, model) in enumerate(families):
            points = sorted((r["network_calls"], r[key]) for r in rows if (r["family"], r["model"]) == (family, model))
            xs, ys = zip(*points)
            swept = len(set(xs)) == len(xs) > 1  # a line only through a sweep of calls, not through settings at equal calls
            ax.plot(xs, ys, marker=markers[model], color=colors[i % len(colors)], linestyle="-" if swept else "none",
                    label=f"{family} ({model})")
        ax.axhline(base[key], color="black", linewidth=0.8, label="baseline (analytic 1024)")
        if key == "gen_ppl":
            ax.axhspan(base["gen_ppl_low"], base["gen_ppl_high"], color="black", alpha=0.08)
        else:
            ax.axhspan(base["entropy"] - 2 * base["entropy_se"], base["entropy"] + 2 * base["entropy_se"], color="black", alpha=0.08)
        ax.axhline(refs["held-out text"][key], color="grey", linestyle="--", label="held-out text")
        ax.set(xscale="log", xlabel="network calls (batch of samples)", ylabel=ylabel)
        if key == "gen_ppl":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out / "sampling_frontier.png", dpi=120)


def measure(args) -> dict:
    """Train what the work dir lacks, then the sweep: the sampling.json record's numbers."""
    ensure_models(args.work, args)
    result = run_sweep(args.work, args)
    result["training"] = {name: json.loads((args.work / name / "seconds.json").read_text())
                          for name in ("ar", "absorbing", "absorbing_ti") if (args.work / name / "seconds.json").is_file()}
    return result


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=quality.ROOT / "runs" / "sampling", help="models, tokenizer and split text")
    add_data_dir_argument(parser)
    parser.add_argument("--steps", type=int, default=600, help="training steps of each model (32 x block_size tokens each)")
    parser.add_argument("--block-size", type=int, default=128, help="training block size")
    parser.add_argument("--eval-blocks", type=int, default=64)
    parser.add_argument("--length", type=int, default=128, help="tokens per sample")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--grid-steps", type=int, nargs="+", default=[1024, 256, 64, 16])
    parser.add_argument("--remask", type=float, nargs="*", default=[0.1, 0.5])
    parser.add_argument("--remask-steps", type=int, nargs="*", default=[256])
    parser.add_argument("--confidence-steps", type=int, nargs="*", default=[64, 32, 16])
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.9, 0.5, 0.2, 0.1, 0.05])
    parser.add_argument("--entropy-bounds", type=float, nargs="*", default=[0.5, 2.0, 4.0, 8.0])
    parser.add_argument("--device", default=None, help="torch device for sampling (default cpu); training uses what accelerate picks (a GPU when there is one)")
    parser.add_argument("--quick", action="store_true", help="tiny settings in runs/sampling-quick, which also gets the results; "
                        "results/ untouched")
    args = harness.parse(parser, argv)
    if args.quick:
        args.work = args.results = args.work.with_name("sampling-quick")
        args.steps, args.eval_blocks = 20, 4
        args.num_samples, args.length, args.grid_steps, args.remask_steps = 4, 16, [1024, 16], [16]
        args.confidence_steps, args.thresholds, args.entropy_bounds = [16, 4], [0.5], [1.0]
    return args


def main() -> None:
    args = parse_args()
    harness.report("sampling", args, lambda: measure(args), markdown, write_plot)


if __name__ == "__main__":
    main()
