"""What `ddlm eval` costs, and what the dataset-level estimator buys.

Two measurements on a trained quickstart-size absorbing model (hidden 128, 4 layers, vocabulary 1024;
default: the one `benchmarks/sampling.py` trains into runs/sampling/absorbing/final, or pass --model):

1. Agreement. The first --blocks full blocks of held-out text are bounded by the per-text estimator
   (128 t per block, the reference) and by the dataset-level estimator at 1, 2 and 8 t per block
   (1/128, 1/64 and 1/16 of its model calls), --seeds times each: the dataset estimate, its reported
   standard error, and its distance from the reference in reference-plus-own standard errors.
2. Memory. `ddlm eval MODEL FILE --quiet` of a ~1 MB file (default wikitext2.valid.txt), run as a
   subprocess under /usr/bin/time -v with the default settings (estimator auto, batch size bounded by
   the available memory) and with the per-text estimator at 2 t per block: peak resident memory, wall
   time and the printed bound.

Writes benchmarks/results/eval_cost.md and .json.

    python benchmarks/eval_cost.py [--model DIR] [--text FILE] [--big-file FILE] [--blocks 48] [--seeds 3]
    python benchmarks/eval_cost.py --report-only   # the tables again from eval_cost.json
"""

import math
import os
import pathlib
import re
import subprocess
import sys
import time

import harness
import torch
from corpora import add_data_dir_argument, corpus

from ddlm.evaluation import text_blocks
from ddlm.likelihood import block_estimates, nll_bound
from ddlm.text.pipeline import DiffusionPipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def agreement(pipe, text: str, num_blocks: int, seeds: int) -> tuple[dict, list[dict]]:
    """The per-text reference at 128 t per block and the dataset estimator at 1, 2 and 8 t per block."""
    blocks = [b for b in text_blocks(pipe.tokenizer, [text], pipe.max_length)[0] if len(b) == pipe.max_length][:num_blocks]
    if len(blocks) < num_blocks:
        raise SystemExit(f"the text has only {len(blocks)} full blocks of {pipe.max_length} tokens; pass a longer --text")
    x0 = torch.tensor(blocks)
    tokens = x0.numel()
    start = time.perf_counter()
    reference = nll_bound(pipe.score_fn, pipe.graph, pipe.noise, x0, 128, torch.Generator().manual_seed(0), batch_size=256)
    ref = {"estimator": "per-text", "t_per_block": 128, "calls_per_token": 128 / pipe.max_length, "seconds": time.perf_counter() - start,
           "nats_per_token": float(reference.bound.sum()) / tokens,
           "stderr_per_token": float(reference.stderr.square().sum().sqrt()) / tokens}
    print(ref, flush=True)
    rows = []
    for t_per_block in (1, 2, 8):
        for seed in range(seeds):
            start = time.perf_counter()
            estimate = block_estimates(pipe.score_fn, pipe.graph, pipe.noise, list(x0), t_per_block,
                                       torch.Generator().manual_seed(1000 + seed), batch_size=256)
            total, stderr = estimate.total()
            row = {"estimator": "dataset", "t_per_block": t_per_block, "seed": seed, "calls_per_token": t_per_block / pipe.max_length,
                   "seconds": time.perf_counter() - start, "nats_per_token": total / tokens, "stderr_per_token": stderr / tokens}
            row["distance_in_own_se"] = abs(row["nats_per_token"] - ref["nats_per_token"]) / row["stderr_per_token"]
            row["distance_in_combined_se"] = abs(row["nats_per_token"] - ref["nats_per_token"]) / math.hypot(
                row["stderr_per_token"], ref["stderr_per_token"])
            rows.append(row)
            print(row, flush=True)
    return {"blocks": len(blocks), "tokens": tokens, **ref}, rows


def measure_eval(model: str, path: str, extra: list[str]) -> dict:
    """Peak resident memory, wall time and the table row of `ddlm eval MODEL PATH --quiet EXTRA`."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "ddlm", "eval", model, path, "--quiet", *extra]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    # the table's two rows of model #1: tokens blocks t/block estimator calls/tok ..., then nats/token +- SE ppl ...
    totals, per_token = (line.split() for line in result.stdout.splitlines() if line.startswith("#1 "))
    return {"command": " ".join(["ddlm eval MODEL FILE --quiet", *extra]), "peak_rss_mb": peak_kb / 1024, "seconds": seconds,
            "tokens": int(totals[1]), "blocks": int(totals[2]), "t_per_block": totals[3], "nats_per_token": float(per_token[1]),
            "stderr_per_token": float(per_token[3]), "ppl": float(per_token[4]), "estimator": totals[4], "calls_per_token": float(totals[5])}


def measure(args) -> dict:
    """The agreement of the estimators and two `ddlm eval` runs of the big file: the eval_cost.json record's numbers."""
    big_file = args.big_file or corpus(args.data_dir, "wikitext2.valid.txt")
    if not os.path.isdir(args.model):
        raise SystemExit(f"{args.model} is not a model directory: run benchmarks/sampling.py (or `ddlm train quickstart`) first, "
                         "or pass --model")
    pipe = DiffusionPipeline.from_pretrained(args.model)
    reference, rows = agreement(pipe, pathlib.Path(args.text).read_text(encoding="utf-8"), args.blocks, args.seeds)
    runs = [measure_eval(args.model, big_file, []), measure_eval(args.model, big_file, ["--estimator", "per-text", "--num-t", "2"])]
    if not args.quiet:
        print(*runs, sep="\n", flush=True)
    model = pathlib.Path(args.model)
    return {"model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else args.model, "block_size": pipe.max_length,
            "vocabulary": pipe.graph.num_tokens, "text": pathlib.Path(args.text).name, "big_file": pathlib.Path(big_file).name,
            "big_file_mb": os.path.getsize(big_file) / 1e6, "reference": reference, "dataset": rows, "eval_runs": runs}


def markdown(record: dict) -> str:
    """eval_cost.md from an eval_cost.json record."""
    reference, rows, runs = record["reference"], record["dataset"], record["eval_runs"]
    lines = [
        f"# Evaluation cost: the dataset-level estimator and memory ({record['machine']})",
        "",
        f"Model: {record['model']} (absorbing, {record['block_size']}-token blocks, vocabulary {record['vocabulary']}). "
        f"Agreement on the first {reference['blocks']} full blocks ({reference['tokens']} tokens) of "
        f"{record['text']}; nats per token, +- one reported standard error; distance: "
        "|dataset - per-text| in the dataset estimate's own standard errors and in both combined.",
        "",
        "| estimator | t / block | calls / token | seed | nats / token | distance (own se) | distance (combined se) | seconds |",
        "|---|---|---|---|---|---|---|---|",
        f"| per-text (reference) | 128 | {reference['calls_per_token']:.3f} | 0 | {reference['nats_per_token']:.4f} +- "
        f"{reference['stderr_per_token']:.4f} | | | {reference['seconds']:.0f} |",
    ]
    for row in rows:
        lines.append(f"| dataset | {row['t_per_block']} | {row['calls_per_token']:.4f} | {row['seed']} | {row['nats_per_token']:.4f} +- "
                     f"{row['stderr_per_token']:.4f} | {row['distance_in_own_se']:.2f} | {row['distance_in_combined_se']:.2f} | "
                     f"{row['seconds']:.1f} |")
    lines += [
        "",
        f"`ddlm eval` of {record['big_file']} ({record['big_file_mb']:.2f} MB), peak resident memory from /usr/bin/time -v:",
        "",
        "| command | estimator | t / block | blocks | tokens | calls / token | nats / token | ppl | peak RSS (MB) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(f"| `{run['command']}` | {run['estimator']} | {run['t_per_block']} | {run['blocks']} | {run['tokens']} | "
                     f"{run['calls_per_token']:.4f} | {run['nats_per_token']:.4f} +- {run['stderr_per_token']:.4f} | {run['ppl']:.2f} | "
                     f"{run['peak_rss_mb']:.0f} | {run['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default=str(ROOT / "runs" / "sampling" / "absorbing" / "final"))
    parser.add_argument("--text", default=str(ROOT / "runs" / "sampling" / "heldout.txt"), help="held-out text for the agreement test")
    parser.add_argument("--big-file", type=pathlib.Path, help="a ~1 MB file for the memory test (default: wikitext2.valid.txt in --data-dir)")
    add_data_dir_argument(parser)
    parser.add_argument("--blocks", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=3)
    parser.set_defaults(threads=1)
    return harness.parse(parser, argv)


def main():
    args = parse_args()
    harness.report("eval_cost", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
