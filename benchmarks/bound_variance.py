"""Standard error of the likelihood bound's t integral at equal cost, by t sampling scheme.

Exact oracle ratios (so the only error is Monte Carlo), random distributions over 3^3 sequences,
LogLinear schedule. For each scheme: the mean reported standard error and the spread of repeated
estimates, per sequence, averaged over the oracle's sequences. Writes benchmarks/results/bound_variance.md
and .json.

    python benchmarks/bound_variance.py [--num-t 256] [--repeats 64]
    python benchmarks/bound_variance.py --report-only   # the table again from bound_variance.json
"""

import harness
import torch

import ddlm
from ddlm.likelihood import T_SAMPLING, nll_bound


def measure(args) -> dict:
    """Reported standard error, mean and worst spread of repeated estimates per graph, t power and u sampling."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for graph in [ddlm.Absorbing(3), ddlm.Uniform(3)]:
        oracle = ddlm.SequenceOracle.random(graph, 3, gen)
        x0 = oracle.sequences.repeat_interleave(args.repeats, 0)  # every sequence, `repeats` independent estimates
        for power in [1.0, 2.0]:
            for method in T_SAMPLING:
                result = nll_bound(oracle.score_fn, graph, ddlm.LogLinear(), x0, num_t=args.num_t, generator=gen,
                                   t_sampling=method, t_power=power, batch_size=x0.shape[0] * 16)
                spread = result.bound.reshape(-1, args.repeats).std(1)
                rows.append({"graph": repr(graph), "power": power, "method": method,
                             "reported": float(result.stderr.reshape(-1, args.repeats).mean(1).mean()),
                             "spread": float(spread.mean()), "worst": float(spread.max())})
                if not args.quiet:
                    print(rows[-1], flush=True)
    return {"sequences": oracle.sequences.shape[0], "rows": rows}


def markdown(record: dict) -> str:
    """bound_variance.md from a bound_variance.json record."""
    args = harness.recorded(record)
    lines = [
        f"# Bound standard error by t sampling ({args.num_t} t per estimate, {args.repeats} repeats, "
        f"{record['sequences']} sequences; {record['machine']})",
        "",
        "| graph | t = u^p | u sampling | mean reported stderr | mean spread of estimates | worst spread |",
        "|---|---|---|---|---|---|",
        *[f"| {r['graph']} | {r['power']:g} | {r['method']} | {r['reported']:.4f} | {r['spread']:.4f} | {r['worst']:.4f} |"
          for r in record["rows"]],
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--num-t", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=64)
    return harness.parse(parser, argv)


def main():
    args = parse_args()
    harness.report("bound_variance", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
