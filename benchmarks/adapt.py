"""Does starting a diffusion LM from an AR model beat training it from scratch?

The AR baseline of benchmarks/quality.py (128 x 4 blocks, byte-level BPE 1024, the first 90 % of WikiText-2's
validation release, ``--ar-steps`` steps of 32 x 128 tokens) is turned into an absorbing, time-independent diffusion
model (``finetune.adapt``: ``ddlm.training.adapt``) and trained K more steps with the diffusion loss, for each K of
``--ks``, with the defaults: ``shift_logits`` on (the AR head reused, token i read at position i - 1) and the
attention annealed from causal to bidirectional over the first ``--anneal-fraction`` of the K steps. It measures

- the adapted model at K = 0 (the AR weights, bidirectional attention, no diffusion training): the starting point;
- the adapted models after K steps, against the AR model and against absorbing diffusion trained from scratch with
  quality.py's recipes at equal total tokens (``--ar-steps`` + K steps), and an AR model trained that long too;
- the learning rate of the adaptation: each of ``--lrs`` at K = ``--ablation-k`` first; the one with the lower held-out
  bound is used for every other adapted run (choosing on the held-out text: the table says so);
- ablations at K = ``--ablation-k``: shift_logits off, annealing off, both off (and shift off at K = 0).

Held-out perplexity: the last 10 % of the text, scored as quality.py scores it (``ddlm.evaluation.score_texts``, one
blocking rule): the likelihood bound with its standard error (dataset estimator, ``--num-t`` t per block) for the
diffusion models, the exact value for the AR models. Data split, tokenizer, recipes and the AR run are quality.py's
(its work dir by default, so a trained quality.py AR run is reused). An interrupted run continues where it stopped:
finished runs are reused, an interrupted training resumes from its checkpoint, scores are cached in the work dir.

It writes benchmarks/results/adapt.md, adapt.json and, where matplotlib is installed, adapt.png.

    OMP_NUM_THREADS=1 python benchmarks/adapt.py --threads 1    # about 75 min on one thread
    python benchmarks/adapt.py --quick    # a smoke run of the whole pipeline (a minute; results in runs/adapt-quick)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import harness
import quality
from corpora import add_data_dir_argument

from ddlm.evaluation import load_model, score_texts
from ddlm.text.scores import TextBound
from ddlm.training.adapt import adapt_ar_model
from ddlm.training.loop import FINAL, latest_checkpoint, train
from ddlm.training.recipes import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/adapt.py --threads 1"
TARGET = 1.5  # adapted bound <= TARGET x the AR perplexity at equal total tokens
SCRATCH_LABELS = {"absorbing": "absorbing from scratch", "absorbing-ti": "absorbing from scratch, time-independent"}


def settings(args, steps: int) -> argparse.Namespace:
    """The arguments quality.recipe reads, for a run of ``steps`` steps."""
    return argparse.Namespace(steps=steps, block_size=args.block_size, eval_blocks=args.eval_blocks)


def anneal_steps(args, k: int) -> int:
    """The default annealing of an adapted run of k steps: over the first ``args.anneal_fraction`` of them (at least one)."""
    return max(1, round(k * args.anneal_fraction)) if k else 0


def adapt_name(k: int, lr: float, shift: bool, anneal: int) -> str:
    return f"adapt-k{k}-lr{lr:g}-shift{int(shift)}-anneal{anneal}"


def adapt_recipe(work: Path, args, k: int, lr: float, shift: bool, anneal: int) -> dict:
    """quality.py's time-independent absorbing recipe for k steps (its data and train sections), started from the AR
    run: a finetune section instead of the model and tokenizer sections."""
    base = quality.recipe("absorbing-ti", work, settings(args, k))
    return {"finetune": {"init_from": str(work / "ar" / FINAL), "adapt": True, "shift_logits": shift, "anneal_steps": anneal},
            "data": base["data"],
            "train": {**base["train"], "lr": lr, "output_dir": str(work / adapt_name(k, lr, shift, anneal))}}


def scratch_recipe(work: Path, args, name: str, steps: int) -> tuple[str, dict]:
    """(run name, recipe) of quality.py's run ``name`` (a key of quality.MODELS) trained ``steps`` steps; the AR run of
    ``--ar-steps`` steps keeps quality.py's run directory, so either script reuses it."""
    out = quality.recipe(name, work, settings(args, steps))
    run = name if name == "ar" and steps == args.ar_steps else f"{'ar' if name == 'ar' else 'scratch-' + name}-{steps}"
    out["train"]["output_dir"] = str(work / run)
    return run, out


def train_run(work: Path, run: str, recipe: dict, args) -> dict:
    """Train (or reuse, or resume) one run; {seconds, tokens, curve: [(tokens, held-out nats/token)]} from its files."""
    path = work / run
    if not (path / FINAL / "config.json").is_file():
        print(f"training {run} ...", flush=True)
        start = time.perf_counter()
        resume = latest_checkpoint(path) is not None
        train(recipe_from_dict(recipe), resume=resume, progress=not args.quiet)
        (path / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "resumed": resume}))
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    key = "eval/nll_per_token" if recipe["train"]["objective"] == "ar" else "eval/bound_per_token"
    return {"seconds": json.loads((path / "seconds.json").read_text())["seconds"],
            "tokens": max(r["tokens"] for r in records if "tokens" in r),
            "curve": [(r.get("tokens", 0), r[key]) for r in records if key in r]}


class Scores:
    """Held-out scores by run name, cached in the work dir (``adapt_scores.json``, keyed by the scoring settings)."""

    def __init__(self, work: Path, heldout: str, args):
        self.heldout, self.args = heldout, args
        self.path = work / "adapt_scores.json"
        self.key = f"num_t={args.num_t}|chars={len(heldout)}|block={args.block_size}"
        stored = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.cache = stored.get(self.key, {})

    def __call__(self, name: str, model=None, tokenizer=None, path: Path | None = None) -> dict:
        """The held-out TextBound (as a dict) of run ``name``: of ``model`` or the model at ``path``."""
        if name not in self.cache:
            if model is None:
                model, tokenizer = load_model(path)
            print(f"scoring {name} ...", flush=True)
            result = score_texts(model.eval(), tokenizer, [self.heldout], self.args.num_t, estimator="dataset", batch_size=256, seed=0,
                                 progress=not self.args.quiet)[0]
            self.cache[name] = vars(result)
            stored = json.loads(self.path.read_text()) if self.path.is_file() else {}
            stored[self.key] = self.cache
            self.path.write_text(json.dumps(stored, indent=1))
        return self.cache[name]


def experiment(args) -> dict:
    """Train (or reuse) every run and score it: the adapt.json record's numbers."""
    began = time.perf_counter()
    work = args.work
    heldout = quality.prepare(work, args)
    if args.heldout_chars:
        heldout = heldout[:args.heldout_chars]
    scores = Scores(work, heldout, args)
    runs, rows = {}, {}  # run name -> training numbers; run name -> what it is

    def trained(run: str, recipe: dict, **row) -> None:
        runs[run] = train_run(work, run, recipe, args)
        rows[run] = row
        scores(run, path=work / run / FINAL)

    ar_run, recipe = scratch_recipe(work, args, "ar", args.ar_steps)
    trained(ar_run, recipe, kind="ar", steps=args.ar_steps)
    ar_model, tokenizer = load_model(work / ar_run / FINAL)
    for shift in (True, False):
        run = adapt_name(0, 0, shift, 0)
        runs[run] = {"seconds": 0.0, "tokens": 0, "curve": []}
        rows[run] = {"kind": "adapted", "k": 0, "lr": None, "shift": shift, "anneal": 0}
        scores(run, adapt_ar_model(ar_model, shift), tokenizer)
    default = {"shift": True, "anneal": anneal_steps(args, args.ablation_k)}
    for lr in args.lrs:
        trained(adapt_name(args.ablation_k, lr, **default), adapt_recipe(work, args, args.ablation_k, lr, **default),
                kind="adapted", k=args.ablation_k, lr=lr, **default)
    trial = {lr: scores(adapt_name(args.ablation_k, lr, **default)) for lr in args.lrs}
    lr = min(args.lrs, key=lambda value: TextBound(**trial[value]).bound)
    for k in args.ks:
        anneal = anneal_steps(args, k)
        trained(adapt_name(k, lr, True, anneal), adapt_recipe(work, args, k, lr, True, anneal), kind="adapted", k=k, lr=lr, shift=True,
                anneal=anneal)
    for steps in sorted(args.ar_steps + k for k in args.scratch_ks):
        for name in args.scratch[:1]:
            run, recipe = scratch_recipe(work, args, name, steps)
            trained(run, recipe, kind=name, steps=steps)
    k = args.ablation_k
    for shift, anneal in ((False, default["anneal"]), (True, 0), (False, 0)):
        trained(adapt_name(k, lr, shift, anneal), adapt_recipe(work, args, k, lr, shift, anneal), kind="adapted", k=k, lr=lr, shift=shift,
                anneal=anneal)
    longest = args.ar_steps + max(args.ks)
    if args.equal_ar:
        run, recipe = scratch_recipe(work, args, "ar", longest)
        trained(run, recipe, kind="ar", steps=longest)
    for steps in sorted(args.ar_steps + k for k in args.scratch_ks):
        for name in args.scratch[1:]:
            run, recipe = scratch_recipe(work, args, name, steps)
            trained(run, recipe, kind=name, steps=steps)
    return {"ar_run": ar_run, "lr": lr, "lr_trial": {f"{value:g}": trial[value] for value in args.lrs}, "runs": runs, "rows": rows,
            "scores": {run: scores(run) for run in runs}, "wall_seconds": time.perf_counter() - began,
            "plotted": importlib.util.find_spec("matplotlib") is not None}  # adapt.png is drawn with matplotlib only


def table_row(label: str, extra: int, total: int, score: TextBound, ar: TextBound, equal_ar: TextBound | None, seconds: float) -> str:
    low, high = score.ppl_interval
    interval = "exact" if score.exact else f"[{low:.2f}, {high:.2f}]"
    versus = f"{score.ppl / equal_ar.ppl:.3f}" if equal_ar is not None else ""
    return (f"| {label} | {extra / 1e6:.2f}M | {total / 1e6:.2f}M | {score.ppl:.2f} | {interval} | {score.ppl / ar.ppl:.3f} | {versus} | "
            f"{seconds / 60:.1f} min |")


def adapted_label(row: dict, lr: float | None = None) -> str:
    if row["k"] == 0:
        return f"adapted, K = 0 (AR weights, no diffusion training{'' if row['shift'] else ', shift off'})"
    switches = f"shift {'on' if row['shift'] else 'off'}, anneal {row['anneal']}"
    return f"adapted, K = {row['k']} ({switches}{'' if lr is None else f', lr {lr:g}'})"


def markdown(record: dict) -> str:
    """adapt.md from an adapt.json record."""
    args, runs, rows, lr = harness.recorded(record), record["runs"], record["rows"], record["lr"]
    scores = {run: TextBound(**s) for run, s in record["scores"].items()}
    ar_run = record["ar_run"]
    ar, ar_tokens = scores[ar_run], runs[ar_run]["tokens"]
    ar_by_tokens = {runs[run]["tokens"]: scores[run] for run, row in rows.items() if row["kind"] == "ar"}
    default = {run: row for run, row in rows.items() if row["kind"] == "adapted" and row["shift"] and
               (row["k"] == 0 or (row["lr"] == lr and row["anneal"] == anneal_steps(args, row["k"])))}
    lines = [
        f"The AR baseline of `benchmarks/quality.py` (128 × 4 blocks, byte-level BPE of 1024 tokens, {args.ar_steps} steps × 32 × "
        f"{args.block_size} = {ar_tokens / 1e6:.2f}M tokens of the first 90 % of `wikitext2.valid.txt`) turned into an absorbing, "
        "time-independent diffusion model (`finetune.adapt: true`) and trained K more steps (32 × "
        f"{args.block_size} tokens each) with the diffusion loss and quality.py's recipe otherwise (cosine schedule, warm-up K / 15, "
        f"EMA 0.999 with warm-up). Defaults: `shift_logits: true`, `anneal_steps` = {args.anneal_fraction:g} × K (attention annealed "
        f"from causal to bidirectional over the first quarter of the K steps), lr {lr:g} (see below). From scratch: quality.py's "
        "recipes trained for the same total number of steps (AR pretraining + K). Held-out: the last 10 % "
        f"({ar.num_tokens} tokens), scored as in quality.py (diffusion: the likelihood bound, {args.num_t} t per block, dataset "
        "estimator, ± 2 standard errors; AR: exact). × AR: against the AR baseline; × AR at equal tokens: against the AR model "
        f"trained on the same total tokens, where one was trained. Machine: {record['machine']}. Command: `{COMMAND}`; "
        f"wall time {record['wall_seconds'] / 60:.1f} min (trained runs reused from an earlier invocation count only in their "
        "train time).",
        "",
        "| model | extra diffusion tokens | total tokens | held-out ppl | ± 2 SE | × AR | × AR at equal tokens | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(runs, key=lambda run: (rows[run]["kind"] != "ar", rows[run]["kind"] != "adapted",
                                            total_tokens(rows[run], runs[run], ar_tokens), run))
    for run in ordered:
        row, tokens = rows[run], runs[run]["tokens"]
        total = total_tokens(row, runs[run], ar_tokens)
        if row["kind"] == "ar":
            label, extra = f"AR, {row['steps']} steps (exact)", 0
        elif row["kind"] == "adapted":
            if run not in default:
                continue
            label, extra = adapted_label(row), tokens
        else:
            label, extra = f"{SCRATCH_LABELS.get(row['kind'], row['kind'])}, {row['steps']} steps", tokens
        lines.append(table_row(label, extra, total, scores[run], ar, ar_by_tokens.get(total), runs[run]["seconds"]))
    lines += ["", target_lines(record, default, ar_by_tokens, ar_tokens)]
    k = args.ablation_k
    reference = scores[adapt_name(k, lr, True, anneal_steps(args, k))]
    lines += ["", f"**Ablations** at K = {k} (lr {lr:g}), and at K = 0: shift_logits off reads token i's prediction at position i "
              "instead of i − 1 (the AR head's meaning lost); anneal 0: bidirectional attention from the first step.", "",
              "| model | shift_logits | anneal_steps | held-out ppl | ± 2 SE | × AR | × default (shift on, annealed) |",
              "|---|---|---|---|---|---|---|"]
    ablations = [run for run, row in rows.items() if row["kind"] == "adapted" and (row["k"] == 0 or (row["k"] == k and row["lr"] == lr))]
    for run in sorted(ablations, key=lambda run: (rows[run]["k"], not rows[run]["shift"], -rows[run]["anneal"])):
        row, score = rows[run], scores[run]
        low, high = score.ppl_interval
        base = scores[adapt_name(0, 0, True, 0)] if row["k"] == 0 else reference
        lines.append(f"| adapted, K = {row['k']} | {'on' if row['shift'] else 'off'} | {row['anneal']} | {score.ppl:.2f} | "
                     f"[{low:.2f}, {high:.2f}] | {score.ppl / ar.ppl:.3f} | {score.ppl / base.ppl:.3f} |")
    lines += ["", f"**Learning rate** of the adaptation, tried at K = {k} (defaults otherwise); the lower held-out bound chose "
              f"lr {lr:g} for every other adapted run (chosen on the held-out text itself, so that number is slightly optimistic).", "",
              "| lr | held-out ppl | ± 2 SE | × AR | train time |", "|---|---|---|---|---|"]
    for value, s in record["lr_trial"].items():
        score = TextBound(**s)
        low, high = score.ppl_interval
        seconds = runs[adapt_name(k, float(value), True, anneal_steps(args, k))]["seconds"]
        lines.append(f"| {value}{' (chosen)' if float(value) == lr else ''} | {score.ppl:.2f} | [{low:.2f}, {high:.2f}] | "
                     f"{score.ppl / ar.ppl:.3f} | {seconds / 60:.1f} min |")
    if record["plotted"]:
        lines += ["", "![held-out perplexity over total training tokens](benchmarks/results/adapt.png)"]
    return "\n".join(lines) + "\n"


def total_tokens(row: dict, run: dict, ar_tokens: int) -> int:
    """Training tokens behind a model: an adapted one's include the AR pretraining."""
    return run["tokens"] + (ar_tokens if row["kind"] == "adapted" else 0)


def target_lines(record: dict, default: dict, ar_by_tokens: dict, ar_tokens: int) -> str:
    """The target, adapted bound <= TARGET x AR perplexity at equal total tokens, for the longest adapted run (and each K against
    the AR baseline)."""
    runs, scores = record["runs"], {run: TextBound(**s) for run, s in record["scores"].items()}
    ar = scores[record["ar_run"]]
    trained = sorted((run for run, row in default.items() if row["k"] > 0), key=lambda run: default[run]["k"])
    longest = trained[-1]
    total = runs[longest]["tokens"] + ar_tokens
    reference = ar_by_tokens.get(total, ar)
    score = scores[longest]
    low, high = score.ppl_interval
    met = score.ppl <= TARGET * reference.ppl
    robust = "its whole ± 2 SE interval too" if high <= TARGET * reference.ppl else (
        "but not its whole ± 2 SE interval" if met else "and so is the interval's lower end" if low > TARGET * reference.ppl
        else "though the interval's lower end is not")
    which = "the AR model trained on the same total tokens" if total in ar_by_tokens else "the AR baseline (none trained on equal tokens)"
    each = "; ".join(f"K = {default[run]['k']}: {scores[run].ppl:.2f} = {scores[run].ppl / ar.ppl:.2f} × AR" for run in trained)
    scratch = [run for run, row in record["rows"].items() if row["kind"] not in ("ar", "adapted") and runs[run]["tokens"] == total]
    versus = "; ".join(f"{SCRATCH_LABELS.get(record['rows'][run]['kind'], record['rows'][run]['kind'])}: {scores[run].ppl:.2f} "
                       f"[{scores[run].ppl_interval[0]:.2f}, {scores[run].ppl_interval[1]:.2f}], adapted / scratch = "
                       f"{score.ppl / scores[run].ppl:.3f} ({overlap(score, scores[run])})" for run in scratch)
    versus = f" **From scratch at equal total tokens** ({total / 1e6:.2f}M): {versus}." if scratch else ""
    return (f"**Target** (adapted bound ≤ {TARGET:g} × AR perplexity at equal total tokens): **{'MET' if met else 'NOT MET'}**. "
            f"Adapted, K = {default[longest]['k']} ({total / 1e6:.2f}M total tokens): {score.ppl:.2f} [{low:.2f}, {high:.2f}] vs "
            f"{TARGET:g} × {reference.ppl:.2f} = {TARGET * reference.ppl:.2f} ({which}): the estimate is "
            f"{'within' if met else 'above'} it, {robust}. Against the AR baseline ({ar.ppl:.2f}): {each}.{versus}")


def overlap(a: TextBound, b: TextBound) -> str:
    """Whether the ± 2 SE intervals of two bounds overlap, in words."""
    (a_low, a_high), (b_low, b_high) = a.ppl_interval, b.ppl_interval
    if a_high < b_low:
        return "lower, the ± 2 SE intervals apart"
    if b_high < a_low:
        return "higher, the ± 2 SE intervals apart"
    return "the ± 2 SE intervals overlap"


def write_plot(record: dict, out: Path) -> None:
    """adapt.png in ``out``: held-out perplexity (training-curve evaluations) over total training tokens; nothing without
    matplotlib."""
    try:
        plt = quality.pyplot()
    except ImportError:
        print("adapt.png not drawn: matplotlib is not installed", flush=True)
        return
    args, runs, rows, lr = harness.recorded(record), record["runs"], record["rows"], record["lr"]
    ar_tokens = runs[record["ar_run"]]["tokens"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for run, row in rows.items():
        curve = runs[run]["curve"]
        if not curve or (row["kind"] == "adapted" and (row["lr"] != lr or not row["shift"]
                                                     or row["anneal"] != anneal_steps(args, row["k"]))):
            continue
        offset = ar_tokens if row["kind"] == "adapted" else 0
        label = {"ar": f"AR, {row.get('steps')} steps (exact)", "adapted": f"adapted, K = {row['k']} (bound)"}.get(
            row["kind"], f"{SCRATCH_LABELS.get(row['kind'], row['kind'])} (bound)")
        tokens, nats = zip(*curve)
        ax.plot([(t + offset) / 1e6 for t in tokens], [math.exp(v) for v in nats], marker="o", markersize=2.5, label=label,
                linestyle="--" if row["kind"] == "ar" else "-")
    ax.set(xlabel="total training tokens (millions)", ylabel="held-out perplexity (bound for diffusion)", yscale="log",
           title=f"Adapting the AR model vs diffusion from scratch ({args.eval_blocks} held-out blocks during training)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "adapt.png", dpi=120)


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=None, help="runs, tokenizer and split text (default: quality.py's, runs/quality, "
                        "so its AR run is reused; --quick: runs/adapt-quick)")
    add_data_dir_argument(parser)
    parser.add_argument("--ar-steps", type=int, default=1000, help="training steps of the AR baseline (32 x block_size tokens each)")
    parser.add_argument("--ks", type=int, nargs="+", default=[125, 250, 500], help="extra diffusion steps of the adapted runs")
    parser.add_argument("--ablation-k", type=int, default=250, help="K of the learning-rate trial and the ablations")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4], help="adaptation learning rates tried at --ablation-k")
    parser.add_argument("--anneal-fraction", type=float, default=0.25, help="default anneal_steps = this x K")
    parser.add_argument("--scratch", nargs="+", default=["absorbing", "absorbing-ti"], choices=quality.DIFFUSION,
                        help="quality.py recipes trained from scratch for --ar-steps + K steps (the first before the ablations)")
    parser.add_argument("--scratch-ks", type=int, nargs="+", default=None, help="the K of the from-scratch runs (default: the largest of --ks)")
    parser.add_argument("--no-equal-ar", dest="equal_ar", action="store_false", help="skip the AR model of --ar-steps + max(--ks) steps")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--eval-blocks", type=int, default=64, help="held-out blocks of the training curves")
    parser.add_argument("--num-t", type=int, default=8, help="t per block for the held-out table (dataset estimator)")
    parser.add_argument("--heldout-chars", type=int, default=None, help="score only this many characters of the held-out text")
    parser.add_argument("--quick", action="store_true", help="tiny settings in runs/adapt-quick (or --work), which also gets the "
                        "results unless --results is given")
    args = harness.parse(parser, argv)
    args.long_fraction = 0.1  # what quality.prepare reads (its data-constrained split; unused here)
    if args.quick:
        args.work = args.work or ROOT / "runs" / "adapt-quick"
        if args.results == harness.RESULTS:
            args.results = args.work
        args.ar_steps, args.ks, args.ablation_k, args.block_size, args.eval_blocks, args.num_t = 6, [4, 8], 4, 32, 2, 2
        args.heldout_chars = args.heldout_chars or 3000
    args.work = args.work or ROOT / "runs" / "quality"
    args.scratch_ks = args.scratch_ks or [max(args.ks)]
    if args.ablation_k not in args.ks:
        parser.error(f"--ablation-k {args.ablation_k} must be one of --ks {args.ks}")
    return args


def main() -> None:
    args = parse_args()
    harness.report("adapt", args, lambda: experiment(args), markdown, write_plot)


if __name__ == "__main__":
    main()
