"""Diffusion vs autoregressive at equal size and token budget, on real text, with error bars.

Trains six models of the same network (128 x 4 blocks) on the first 90 % of WikiText-2 (validation
release, wikitext2.valid.txt in --data-dir: see benchmarks/corpora.py) with the same byte-level BPE (1024 tokens), batch, schedule and number of
training tokens: absorbing diffusion (log-linear) with i.i.d. uniform t, with variance-reduced time
sampling (stratified t = u^2 with importance weights) and time-independent (no time conditioning);
uniform diffusion (geometric) with i.i.d. and with variance-reduced t; and the AR baseline. Then it
measures

- the held-out perplexity (the last 10 %) and zero-shot on PTB: the diffusion bound with its
  standard error, the AR model's exact value, under one blocking rule (``ddlm.evaluation``);
- the held-out curve over training tokens (from each run's metrics.jsonl) and the per-step noise of
  each run's training loss;
- the t-integral estimators: standard error at equal model calls, i.i.d. vs stratified, t uniform vs
  t = u^2, and the calls each needs to match i.i.d. uniform t;
- sample quality per predictor and number of steps: generative perplexity under the AR model,
  unigram entropy, distinct-n, with the held-out text and the AR model's samples as references.

It writes benchmarks/results/quality.md, quality.json, quality_training.png and quality_sampling.png.

With ``--long``, the data-constrained experiment instead: the AR model and the absorbing model
(i.i.d. t: it trains better than the variance-reduced recipe at equal tokens) trained for many
epochs (``--long-epochs``) over a small share of the training text (``--long-fraction``), the
held-out perplexity plotted against epochs; it writes quality_long.md, quality_long.json and
quality_long.png.

The docs' Results page (docs/results/index.md) includes the tables and plots when the site is built.
An interrupted run continues where it stopped (trained models are reused, an interrupted training
resumes from its checkpoint), so the runs can also be trained in parallel lanes first.

    python benchmarks/quality.py            # about 2.2 h on 2 cores: 6 x 17-25 min training, then 10 min measuring
    python benchmarks/quality.py --long     # about 75 min (2 x 35 min training, 1 thread each)
    python benchmarks/quality.py --train-only absorbing uniform ar long-ar &   # two lanes on two cores, then
    python benchmarks/quality.py --train-only absorbing-vr uniform-vr absorbing-ti long-absorbing; wait
    python benchmarks/quality.py --quick    # a smoke run of the whole pipeline (minutes; results not written)
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import harness
import torch
from corpora import add_data_dir_argument, corpus

from ddlm.evaluation import load_model, load_tokenizer, score_texts, text_blocks
from ddlm.evaluation.sample_quality import ar_sample, sample_metrics
from ddlm.likelihood import nll_bound
from ddlm.text.corpora import DataConfig, build_datasets
from ddlm.text.pipeline import DiffusionPipeline
from ddlm.text.scores import TextBound
from ddlm.text.tokenization import train_byte_bpe
from ddlm.training.loop import FINAL, latest_checkpoint, train
from ddlm.training.recipes import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python benchmarks/quality.py"
EVAL_NUM_T = 16  # t per block of the held-out curves during training
VARIANCE_REDUCED = {"t_sampling": "stratified", "t_importance": "power"}  # train.t_sampling, t = t_min + (1 - t_min) u^2, p/q weights
MODELS = {  # run name -> (table label, objective, process, schedule, overrides of the recipe's model and train sections)
    "absorbing": ("absorbing", "diffusion", "absorbing", "loglinear", {}),
    "absorbing-vr": ("absorbing, stratified t = u^2", "diffusion", "absorbing", "loglinear", {"train": VARIANCE_REDUCED}),
    "absorbing-ti": ("absorbing, time-independent", "diffusion", "absorbing", "loglinear", {"model": {"time_conditioning": False}}),
    "uniform": ("uniform", "diffusion", "uniform", "geometric", {}),
    "uniform-vr": ("uniform, stratified t = u^2", "diffusion", "uniform", "geometric", {"train": VARIANCE_REDUCED}),
    "ar": ("ar", "ar", "absorbing", "loglinear", {}),
}
DIFFUSION = [name for name, spec in MODELS.items() if spec[1] == "diffusion"]
LONG_MODELS = ("ar", "absorbing")  # the data-constrained run (--long): the AR model and the better absorbing recipe at equal tokens
PREDICTORS = ("euler", "tau_leaping", "analytic")
T_METHODS = {  # label -> (t_sampling, t_power)
    "i.i.d. u, t = u (uniform t)": ("iid", 1.0),
    "i.i.d. u, t = u^2": ("iid", 2.0),
    "stratified u, t = u": ("stratified", 1.0),
    "stratified u, t = u^2 (default)": ("stratified", 2.0),
}


def split_articles(text: str, fraction: float) -> tuple[list[str], str]:
    """WikiText articles (headed ' = Title = ') before the article boundary nearest ``fraction`` of the
    characters, as training documents; the rest as one held-out text."""
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = $", text, re.M)] + [len(text)]
    cut = min(starts, key=lambda s: abs(s - fraction * len(text)))
    train_docs = [text[a:b] for a, b in zip(starts, starts[1:]) if b <= cut]
    return train_docs, text[cut:]


def run_dir(work: Path, name: str, long: bool = False) -> Path:
    return work / (f"long-{name}" if long else name)


def recipe(name: str, work: Path, args, *, long: bool = False) -> dict:
    """The recipe of run ``name`` (a key of MODELS); ``long``: the data-constrained run on train-long.jsonl."""
    _, objective, process, schedule, overrides = MODELS[name]
    steps = long_steps(work, args) if long else args.steps
    out = {
        "model": {"preset": "tiny", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "cond_dim": 64,
                  "process": process, "schedule": schedule, "dropout": 0.1},
        "tokenizer": {"name": str(work / "tokenizer")},
        "data": {"source": str(work / ("train-long.jsonl" if long else "train.jsonl")), "validation_split": str(work / "heldout.txt"),
                 "block_size": args.block_size, "cache_dir": str(work / "cache")},
        "train": {"objective": objective, "steps": steps, "global_batch_size": 32, "micro_batch_size": 32, "lr": 1e-3,
                  "warmup_steps": max(1, args.steps // 15), "decay": "cosine", "ema": 0.999, "log_every": 25,
                  "eval_every": max(1, steps // evaluations(objective, args, long)), "eval_blocks": args.eval_blocks, "eval_num_t": EVAL_NUM_T,
                  "sample_every": steps, "num_samples": 1, "sample_steps": 32, "save_every": max(1, steps // 4),
                  "trackers": ["tensorboard"], "output_dir": str(run_dir(work, name, long)), "seed": 0},
    }
    for section, values in overrides.items():
        out[section].update(values)
    return out


def evaluations(objective: str, args, long: bool) -> int:
    """Held-out evaluations along a run: 10; a long run's ``args.long_evals``, times 8 for the AR model, whose best
    comes within a few epochs and whose exact NLL costs one forward per block (the bound's costs EVAL_NUM_T)."""
    if not long:
        return 10
    return args.long_evals * (8 if objective == "ar" else 1)


def long_steps(work: Path, args) -> int:
    """Steps of the data-constrained runs: ``args.long_epochs`` passes over train-long.jsonl's blocks."""
    return math.ceil(args.long_epochs * count_blocks(work, work / "train-long.jsonl", args) / 32)


def count_blocks(work: Path, source: Path, args) -> int:
    """Training blocks of ``source``, packed (and cached) as training packs them."""
    config = DataConfig(source=str(source), validation_split=str(work / "heldout.txt"), block_size=args.block_size, cache_dir=str(work / "cache"))
    return len(build_datasets(config, load_tokenizer(work / "tokenizer"))[0])


def train_runs(work: Path, names, args, *, long: bool = False) -> dict[str, dict]:
    """Train (or reuse, or resume) each run; returns name -> {seconds, tokens, curve: [(tokens, held-out nats/token)], loss_noise}.

    loss_noise: the standard deviation of the per-step training loss over the last ``args.noise_steps`` steps, from
    successive differences (std(diff) / sqrt(2)), so the slow downward trend does not count as noise."""
    runs = {}
    for name in names:
        run = run_dir(work, name, long)
        if not (run / FINAL / "config.json").is_file():
            start = time.perf_counter()
            resume = latest_checkpoint(run) is not None
            train(recipe_from_dict(recipe(name, work, args, long=long)), resume=resume, progress=not args.quiet)
            (run / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "resumed": resume}))
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        key = "eval/nll_per_token" if MODELS[name][1] == "ar" else "eval/bound_per_token"
        curve = [(r.get("tokens", 0), r[key]) for r in records if key in r]
        last = max(r["tokens"] for r in records if "tokens" in r)
        losses = torch.tensor([r["train/loss"] for r in records if "train/loss" in r][-args.noise_steps:])
        runs[name] = {"seconds": json.loads((run / "seconds.json").read_text())["seconds"], "tokens": last, "curve": curve,
                      "loss_noise": float(losses.diff().std() / math.sqrt(2))}
    return runs


def perplexity_table(models, tokenizer, texts: dict[str, str], args) -> dict:
    """name -> text name -> TextBound."""
    return {name: dict(zip(texts, score_texts(model, tokenizer, list(texts.values()), args.num_t, estimator="dataset", batch_size=256,
                                             seed=0, progress=not args.quiet)))
            for name, model in models.items()}


def t_estimators(model, blocks: torch.Tensor, args) -> dict:
    """Empirical and reported standard errors of the bound per block for each t estimator, at num_t calls."""
    out = {}
    for label, (method, power) in T_METHODS.items():
        generator = torch.Generator().manual_seed(1)
        estimates, reported = [], []
        for _ in range(args.repeats):
            r = nll_bound(model, model.graph, model.noise, blocks, args.variance_num_t, generator, t_sampling=method, t_power=power, batch_size=256)
            estimates.append(r.bound)
            reported.append(r.stderr)
        estimates, reported = torch.stack(estimates), torch.stack(reported)  # [repeats, blocks]
        out[label] = {"empirical_se": float(estimates.var(0).mean().sqrt()), "reported_se": float(reported.square().mean().sqrt()),
                      "mean_bound": float(estimates.mean() / blocks.shape[1])}
    base = out[next(iter(T_METHODS))]["empirical_se"]
    for row in out.values():
        row["calls_to_match"] = args.variance_num_t * (row["empirical_se"] / base) ** 2
    return out


def predictors(name: str) -> tuple[str, ...]:
    """The predictors swept for diffusion run ``name``: for absorbing log-linear models euler is the analytic step
    exactly (the same draws), so it is not repeated."""
    return tuple(p for p in PREDICTORS if not (p == "euler" and MODELS[name][2:4] == ("absorbing", "loglinear")))


def sample_sweep(models, tokenizer, heldout_blocks: torch.Tensor, args) -> dict:
    """(run, predictor, steps) -> metrics of samples; plus the references 'held-out text' and 'AR samples'."""
    reference, eos = models["ar"], tokenizer.eos_token_id
    n, length = args.num_samples, args.block_size
    out = {"held-out text": sample_metrics(reference, heldout_blocks[:n], eos, batch_size=64),
           "AR samples": sample_metrics(reference, ar_sample(reference, n, length, eos, generator=torch.Generator().manual_seed(0)), eos, batch_size=64)}
    for name in DIFFUSION:
        pipe = DiffusionPipeline(models[name], tokenizer)
        for predictor in predictors(name):
            for steps in args.sample_steps:
                ids = pipe.sample(n, length, steps, predictor, seed=0, progress=False)
                out[f"{name}|{predictor}|{steps}"] = sample_metrics(reference, ids, eos, batch_size=64)
    return out


def curve_label(name: str) -> str:
    return f"{MODELS[name][0]} ({'exact' if MODELS[name][1] == 'ar' else 'bound'})"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(record: dict, out: Path) -> None:
    """quality_training.png and quality_sampling.png in ``out``, from a quality.json record."""
    args, runs, sweep = harness.recorded(record), record["runs"], record["samples"]
    plot_curves(runs, 1e6, "training tokens (millions)", f"WikiText-2 held-out, {args.eval_blocks} blocks of {args.block_size}",
                out / "quality_training.png")
    plt = pyplot()
    fig, axes = plt.subplots(2, len(DIFFUSION), figsize=(3.6 * len(DIFFUSION), 6.5), sharex=True, squeeze=False)
    for col, name in enumerate(DIFFUSION):
        for row, key in enumerate(("gen_ppl", "entropy")):
            ax = axes[row, col]
            for predictor in predictors(name):
                ax.plot(args.sample_steps, [sweep[f"{name}|{predictor}|{s}"][key] for s in args.sample_steps], marker="o", label=predictor)
            for ref, style in (("held-out text", "--"), ("AR samples", ":")):
                ax.axhline(sweep[ref][key], color="grey", linestyle=style, label=ref)
            ax.set(xscale="log", title=MODELS[name][0], ylabel="generative perplexity (AR)" if key == "gen_ppl" else "unigram entropy (nats)")
            if key == "gen_ppl":
                ax.set_yscale("log")
            ax.set_xticks(args.sample_steps, [str(s) for s in args.sample_steps])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("sampling steps")
    axes[0, DIFFUSION.index("uniform")].legend(fontsize=7)  # the absorbing panels have no euler line
    fig.suptitle("absorbing: euler = analytic exactly (not repeated)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "quality_sampling.png", dpi=120)


def markdown(record: dict) -> str:
    """quality.md from a quality.json record."""
    args, runs, estimators, sweep, params = (harness.recorded(record), record["runs"], record["estimators"], record["samples"],
                                             record["params"])
    table = {name: {text: TextBound(**r) for text, r in results.items()} for name, results in record["perplexity"].items()}
    ar = table["ar"]
    lines = [
        f"Six models of the same network (128 × 4 blocks, 4 heads; byte-level BPE of 1024 tokens trained on the training text), "
        f"each trained on {runs['ar']['tokens'] / 1e6:.2f}M tokens ({args.steps} steps × 32 × {args.block_size}) of the first 90 % of "
        f"`wikitext2.valid.txt`; held-out: the last 10 % ({ar['held-out'].num_tokens} tokens); zero-shot: `ptb.valid.txt` "
        f"({ar['ptb'].num_tokens} tokens). \"stratified t = u^2\": `train.t_sampling: stratified` with `train.t_importance: power` "
        "(the others draw t i.i.d. uniform); \"time-independent\": `model.time_conditioning: false`. Loss noise: the standard deviation "
        f"of the per-step training loss over the last {args.noise_steps} steps (from successive differences; cross-entropy for AR). "
        f"Machine: {record['machine']}. Command: `{COMMAND}`.",
        "",
        "| model | params | train time | loss noise | held-out ppl | ± 2 SE | × AR | PTB ppl (zero-shot) | × AR | held-out bits/byte |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, results in table.items():
        held, ptb = results["held-out"], results["ptb"]
        kind = "exact" if held.exact else f"bound, {held.num_t} t/block, dataset estimator"
        low, high = held.ppl_interval
        lines.append(f"| {MODELS[name][0]} ({kind}) | {params[name] / 1e6:.3f}M | {runs[name]['seconds'] / 60:.1f} min | "
                     f"{runs[name]['loss_noise']:.3f} | {held.ppl:.2f} | [{low:.2f}, {high:.2f}] | {held.ppl / ar['held-out'].ppl:.3f} | "
                     f"{ptb.ppl:.1f} | {ptb.ppl / ar['ptb'].ppl:.3f} | {held.bits_per_byte:.4f} |")
    lines += ["", "![held-out perplexity over training tokens](benchmarks/results/quality_training.png)", "",
              f"**t-integral estimators** (absorbing model, {args.variance_blocks} held-out blocks, {args.variance_num_t} model calls per block, "
              f"{args.repeats} repeats): the empirical standard error of a block's bound, the standard error the estimator reports, "
              "and the calls per block each needs to reach the i.i.d.-uniform-t standard error (SE² ∝ 1/calls).", "",
              "| estimator | bound (nats/token) | empirical SE (nats/block) | reported SE | calls to match i.i.d. uniform t | × |",
              "|---|---|---|---|---|---|"]
    for label, row in estimators.items():
        lines.append(f"| {label} | {row['mean_bound']:.4f} | {row['empirical_se']:.3f} | {row['reported_se']:.3f} | "
                     f"{row['calls_to_match']:.1f} | {row['calls_to_match'] / args.variance_num_t:.2f} |")
    lines += ["", f"**Sample quality** ({args.num_samples} samples of {args.block_size} tokens per setting; generative perplexity "
              "under the AR model above; unigram entropy per sample; distinct-n over all samples):", "",
              "| samples | predictor | steps | gen. ppl | entropy (nats) | distinct-2 | distinct-4 |", "|---|---|---|---|---|---|---|"]
    for key, m in sweep.items():
        name, predictor, steps = (key.split("|") + ["", ""])[:3]
        lines.append(f"| {MODELS[name][0] if name in MODELS else name} | {predictor} | {steps} | {m['gen_ppl']:.1f} | {m['entropy']:.3f} | "
                     f"{m['distinct_2']:.3f} | {m['distinct_4']:.3f} |")
    lines += ["", "![generative perplexity and entropy over sampling steps](benchmarks/results/quality_sampling.png)"]
    return "\n".join(lines) + "\n"


def long_experiment(args) -> dict:
    """Train (or reuse) the data-constrained runs and score their final models on the whole held-out text: the
    quality_long.json record's numbers."""
    work = args.work
    heldout = prepare(work, args)
    runs = train_runs(work, LONG_MODELS, args, long=True)
    epoch_tokens = count_blocks(work, work / "train-long.jsonl", args) * args.block_size
    final = {}
    for name in LONG_MODELS:
        model, tokenizer = load_model(run_dir(work, name, long=True) / FINAL)
        final[name] = score_texts(model, tokenizer, [heldout], args.num_t, estimator="dataset", batch_size=256, seed=0,
                                  progress=not args.quiet)[0]
    return {"epoch_tokens": epoch_tokens, "runs": runs, "final": {name: vars(r) for name, r in final.items()}}


def long_markdown(record: dict) -> str:
    """quality_long.md from a quality_long.json record."""
    args, runs, epoch_tokens = harness.recorded(record), record["runs"], record["epoch_tokens"]
    final = {name: TextBound(**r) for name, r in record["final"].items()}
    lines = [
        f"The same networks and recipes as above, trained for {args.long_epochs:g} epochs over the first {args.long_fraction:.0%} of the "
        f"training text ({epoch_tokens} tokens, {epoch_tokens // args.block_size} blocks; {runs['ar']['tokens'] / 1e6:.2f}M training tokens "
        f"per model). Curve: held-out perplexity on {args.eval_blocks} blocks at {args.long_evals} points, the AR model's at "
        f"{evaluations('ar', args, True)} (EMA weights; bound for diffusion, {EVAL_NUM_T} t per block); final: the whole held-out "
        f"text ({args.num_t} t per block, dataset estimator). Machine: {record['machine']}. Command: `{COMMAND} --long`.",
        "",
        "| model | train time | best held-out ppl (curve) | at epoch | final held-out ppl (curve) | final, whole held-out ± 2 SE |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        best_tokens, best = min(run["curve"][1:], key=lambda point: point[1])
        low, high = final[name].ppl_interval
        lines.append(f"| {curve_label(name)} | {run['seconds'] / 60:.1f} min | {math.exp(best):.2f} | {best_tokens / epoch_tokens:.0f} | "
                     f"{math.exp(run['curve'][-1][1]):.2f} | {final[name].ppl:.2f} [{low:.2f}, {high:.2f}] |")
    lines += ["", "![held-out perplexity over epochs, data-constrained](benchmarks/results/quality_long.png)"]
    return "\n".join(lines) + "\n"


def plot_long(record: dict, out: Path) -> None:
    """quality_long.png in ``out``, from a quality_long.json record."""
    epoch_tokens = record["epoch_tokens"]
    plot_curves(record["runs"], epoch_tokens, "epochs over the training text", f"Data-constrained: {epoch_tokens} training tokens, best marked",
                out / "quality_long.png", mark_best=True)


def plot_curves(runs, x_unit: float, xlabel: str, title: str, path: Path, *, mark_best: bool = False) -> None:
    """Held-out perplexity (log scale) of each run's curve against training tokens / ``x_unit``; ``mark_best``: a star
    at each curve's minimum, the untrained point left out."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        tokens, nats = zip(*run["curve"][1 if mark_best else 0:])
        line, = ax.plot([t / x_unit for t in tokens], [math.exp(v) for v in nats], marker="o", markersize=3, label=curve_label(name))
        if mark_best:
            best = min(range(len(nats)), key=nats.__getitem__)
            ax.plot(tokens[best] / x_unit, math.exp(nats[best]), marker="*", markersize=12, color=line.get_color())
    ax.set(xlabel=xlabel, ylabel="held-out perplexity (bound for diffusion)", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` holds it already (its mtime keys the token cache, and parallel --train-only runs read it)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def prepare(work: Path, args) -> str:
    """Split the text, write train.jsonl / train-long.jsonl / heldout.txt and the tokenizer under ``work``; returns the held-out text."""
    work.mkdir(parents=True, exist_ok=True)
    train_docs, heldout = split_articles(corpus(args.data_dir, "wikitext2.valid.txt").read_text(encoding="utf-8"), 0.9)
    long_docs, _ = split_articles("".join(train_docs), args.long_fraction)
    for name, docs in (("train.jsonl", train_docs), ("train-long.jsonl", long_docs)):
        write_if_changed(work / name, "".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    write_if_changed(work / "heldout.txt", heldout)
    if not (work / "tokenizer" / "tokenizer.json").is_file():
        train_byte_bpe(train_docs, 1024).save_pretrained(work / "tokenizer")
    return heldout


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "quality", help="runs, tokenizer and split text")
    add_data_dir_argument(parser)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each model (32 x block_size tokens each)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--eval-blocks", type=int, default=64, help="held-out blocks of the training curves")
    parser.add_argument("--num-t", type=int, default=4, help="t per block for the perplexity table (dataset estimator: stratified over a text's blocks)")
    parser.add_argument("--variance-blocks", type=int, default=16)
    parser.add_argument("--variance-num-t", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--noise-steps", type=int, default=200, help="last training steps whose loss noise is reported")
    parser.add_argument("--long", action="store_true", help="the data-constrained experiment instead: " + ", ".join(LONG_MODELS)
                        + " for --long-epochs passes over the first --long-fraction of the training text")
    parser.add_argument("--long-fraction", type=float, default=0.1, help="share of the training text (by articles) the long runs see")
    parser.add_argument("--long-epochs", type=float, default=160)
    parser.add_argument("--long-evals", type=int, default=20, help="held-out evaluations along each long diffusion run (the AR run: 8 times as many)")
    parser.add_argument("--train-only", nargs="+", metavar="RUN", choices=list(MODELS) + [f"long-{n}" for n in LONG_MODELS],
                        help="train (or resume) these runs and stop: parallel lanes on a many-core machine, then the full command reuses them")
    parser.add_argument("--quick", action="store_true", help="tiny settings in a separate work dir (runs/quality-quick), "
                        "which also gets the results; results/ untouched")
    args = harness.parse(parser, argv)
    if args.quick:
        args.work = args.results = args.work.with_name("quality-quick")
        args.steps, args.eval_blocks, args.num_t = 20, 4, 4
        args.variance_blocks, args.variance_num_t, args.repeats, args.num_samples, args.sample_steps = 2, 4, 2, 4, [4, 8]
        args.long_epochs, args.long_evals = 2, 2
    return args


def experiment(args) -> dict:
    """Train (or reuse) the six runs and measure them: the quality.json record's numbers."""
    work = args.work
    heldout = prepare(work, args)
    runs = train_runs(work, MODELS, args)
    models, tokenizer = {}, None
    for name in MODELS:
        models[name], tokenizer = load_model(work / name / FINAL)
    texts = {"held-out": heldout, "ptb": corpus(args.data_dir, "ptb.valid.txt").read_text(encoding="utf-8")}
    print("perplexities ...", flush=True)
    table = perplexity_table(models, tokenizer, texts, args)
    blocks = torch.tensor([b for b in text_blocks(tokenizer, [heldout], args.block_size)[0] if len(b) == args.block_size])
    print("t estimators ...", flush=True)
    estimators = t_estimators(models["absorbing"], blocks[:args.variance_blocks], args)
    print("sample quality ...", flush=True)
    sweep = sample_sweep(models, tokenizer, blocks, args)
    return {"runs": runs, "estimators": estimators, "samples": sweep,
            "perplexity": {name: {text: vars(r) for text, r in results.items()} for name, results in table.items()},
            "params": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}}


def main() -> None:
    args = parse_args()
    if args.train_only:
        prepare(args.work, args)
        for run in args.train_only:
            name = run.removeprefix("long-")
            train_runs(args.work, [name], args, long=run != name)
    elif args.long:
        harness.report("quality_long", args, lambda: long_experiment(args), long_markdown, plot_long)
    else:
        harness.report("quality", args, lambda: experiment(args), markdown, write_plots)


if __name__ == "__main__":
    main()
