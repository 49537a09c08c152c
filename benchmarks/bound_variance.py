"""Standard error of the likelihood bound's t integral at equal cost, by t sampling scheme.

Exact oracle ratios (so the only error is Monte Carlo), random distributions over 3^3 sequences,
LogLinear schedule. For each scheme: the mean reported standard error and the spread of repeated
estimates, per sequence, averaged over the oracle's sequences. Writes benchmarks/results/bound_variance.md.

    python benchmarks/bound_variance.py [--num-t 256] [--repeats 64]
"""

import argparse
import pathlib
import platform

import torch

import ddlm
from ddlm.likelihood import T_SAMPLING, nll_bound


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-t", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=64)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for graph in [ddlm.Absorbing(3), ddlm.Uniform(3)]:
        oracle = ddlm.SequenceOracle.random(graph, 3, gen)
        x0 = oracle.sequences.repeat_interleave(args.repeats, 0)  # every sequence, `repeats` independent estimates
        for power in [1.0, 2.0]:
            for method in T_SAMPLING:
                result = nll_bound(oracle.score_fn, graph, ddlm.LogLinear(), x0, num_t=args.num_t, generator=gen,
                                   t_sampling=method, t_power=power, batch_size=x0.shape[0] * 16)
                spread = result.bound.reshape(-1, args.repeats).std(1).mean()
                reported = result.stderr.reshape(-1, args.repeats).mean(1).mean()
                worst = result.bound.reshape(-1, args.repeats).std(1).max()
                rows.append((repr(graph), power, method, float(reported), float(spread), float(worst)))
                print(*rows[-1])
    lines = [
        f"# Bound standard error by t sampling ({args.num_t} t per estimate, {args.repeats} repeats, "
        f"27 sequences; {platform.machine()} CPU, torch {torch.__version__})",
        "",
        "| graph | t = u^p | u sampling | mean reported stderr | mean spread of estimates | worst spread |",
        "|---|---|---|---|---|---|",
        *[f"| {g} | {p:g} | {m} | {r:.4f} | {s:.4f} | {w:.4f} |" for g, p, m, r, s, w in rows],
    ]
    out = pathlib.Path(__file__).parent / "results" / "bound_variance.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
