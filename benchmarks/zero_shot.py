"""The zero-shot suite on this project's own small models, under both protocols, offline.

No hub here, so the benchmarks are the local files the project has, read through the same path as
``ddlm eval --benchmark NAME=PATH``: wikitext2.valid.txt (WikiText-2 validation text, one hub row
per line) and ptb.valid.txt (PTB validation sentences) in --data-dir (benchmarks/corpora.py). Both are
validation splits, so every row says ``validation`` (the papers' SEDD protocol scores WikiText-2's
train split and PTB's test split). Each model is scored under ``sedd`` and ``mdlm`` with the
dataset-level estimator (diffusion; ``--num-t`` t per block) or exactly (AR), on the first ``--limit``
blocks of each file (a 2-core CPU shared with other work scores about 1300 blocks of 128 tokens
in 6 minutes at 2 t per block). Writes
benchmarks/results/zero_shot.md and .json.

    ddlm train quickstart train.steps=400 train.output_dir=runs/zero-shot/absorbing
    ddlm train quickstart train.steps=400 train.objective=ar train.output_dir=runs/zero-shot/ar
    python benchmarks/zero_shot.py runs/zero-shot/absorbing/final runs/zero-shot/ar/final [--num-t 4] [--limit 256]
    python benchmarks/zero_shot.py --report-only   # the table again from zero_shot.json
"""

import json
import time

import harness
from corpora import add_data_dir_argument, corpus

from ddlm.evaluation import load_model
from ddlm.evaluation.zero_shot import PROTOCOLS, evaluate_benchmark

FILES = {"wikitext2": "wikitext2.valid.txt", "ptb": "ptb.valid.txt"}  # benchmark -> file in --data-dir


def measure(args) -> dict:
    """Each model under each benchmark file and protocol: the zero_shot.json record's rows."""
    files = {name: corpus(args.data_dir, file) for name, file in FILES.items()}
    rows = []
    for path in args.models:
        model, tokenizer = load_model(path)
        kind = "AR" if model.config.objective == "ar" else f"{model.config.process} diffusion"
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for name, file in files.items():
            for protocol in PROTOCOLS:
                start = time.perf_counter()
                r = evaluate_benchmark(model, tokenizer, name, protocol, args.num_t, estimator="dataset", split="validation",
                                       path=file, limit=args.limit or None, seed=args.seed, progress=False)
                row = dict(model=path, kind=kind, params_m=round(params, 2), length=model.config.max_position_embeddings,
                           benchmark=name, protocol=protocol, split=r.split, blocks=r.num_blocks, tokens=r.num_tokens,
                           t_per_block=r.num_t, estimator=r.estimator, nats_per_token=r.per_token,
                           stderr_per_token=r.stderr / r.num_tokens, ppl=r.ppl, ppl_stderr=r.ppl_stderr,
                           seconds=time.perf_counter() - start)
                rows.append(row)
                if not args.quiet:
                    print(json.dumps(row))
    return {"rows": rows}


def markdown(record: dict) -> str:
    """zero_shot.md from a zero_shot.json record."""
    args = harness.recorded(record)
    lines = [
        f"Zero-shot perplexity of this project's small models on local WikiText-2 and PTB validation text, both protocols "
        f"(`python benchmarks/zero_shot.py`; {record['machine']}; diffusion: "
        f"upper bound, dataset-level estimator with {args.num_t} t per block, ± one standard error; AR: exact; "
        f"{f'the first {args.limit} blocks of each file' if args.limit else 'every block'}).",
        "",
        "| model | benchmark | protocol | blocks × length | tokens scored | nats/token | perplexity | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        bound = "≤ " if r["kind"] != "AR" else ""
        error = f" ± {r['stderr_per_token']:.4f}" if r["kind"] != "AR" else ""
        ppl_error = f" ± {r['ppl_stderr']:.2f}" if r["kind"] != "AR" else ""
        lines.append(f"| {r['kind']} ({r['params_m']}M) | {r['benchmark']} ({r['split']}) | {r['protocol']} | "
                     f"{r['blocks']} × {r['length']} | {r['tokens']:,} | {bound}{r['nats_per_token']:.4f}{error} | "
                     f"{bound}{r['ppl']:.2f}{ppl_error} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("models", nargs="*", help="ddlm model directories (diffusion or AR) with their tokenizers")
    parser.add_argument("--num-t", type=int, default=4, help="t per block of the dataset-level estimator (diffusion)")
    parser.add_argument("--limit", type=int, default=256, help="score the first N blocks of each file and protocol (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    add_data_dir_argument(parser)
    parser.set_defaults(threads=1)
    args = harness.parse(parser, argv)
    if not (args.models or args.report_only):
        parser.error("give the model directories to score (or --report-only)")
    return args


def main():
    args = parse_args()
    harness.report("zero_shot", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
