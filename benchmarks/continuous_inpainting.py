"""Inpainting error of the continuous samplers: the exact conditional score against replacement.

Oracle: the 2-D mixture of docs/how-to/continuous-guidance.md, second coordinate known (= y), first
coordinate sampled. Exact answers come from ``GaussianMixture.condition``: mode weight P(x[0] < split),
mean and std of x[0] given x[1] = y. For each method, step count and y: several seeds of n samples;
the table gives the mean over seeds and the spread across seeds (one standard deviation), and the
error of the seed-mean. Writes benchmarks/results/continuous_inpainting.{md,json}.

    python benchmarks/continuous_inpainting.py [--samples 20000] [--seeds 3] [--steps 100 1000]
    python benchmarks/continuous_inpainting.py --report-only   # the table again from continuous_inpainting.json
"""

import math
import time

import harness
import torch

import ddlm.continuous as dc

SPLIT = 0.4  # between the two conditional modes of x[0]


def left_mass(mixture, split):
    """P(x[0] < split) under a mixture, exactly."""
    covs = mixture.covariances()
    return sum(
        w * 0.5 * math.erfc((mu[0].item() - split) / math.sqrt(2 * c[0, 0].item()))
        for w, mu, c in zip(mixture.weights.tolist(), mixture.means, covs)
    )


def measure(args) -> dict:
    """Weight, mean and std of x[0] (mean and spread over seeds) per y, method, sampler and steps, in float64."""
    torch.set_default_dtype(torch.float64)
    sde = dc.VPSDE()
    mixture = dc.GaussianMixture(
        [0.3, 0.7], [[-2.0, -1.0], [2.0, 1.0]],
        covariances=[[[0.5, 0.3], [0.3, 0.6]], [[0.4, -0.2], [-0.2, 0.5]]],
    )
    mask = torch.tensor([False, True])
    shape = (args.samples, 2)
    rows = []
    for value in args.values:
        values = torch.tensor([0.0, value])
        conditional = mixture.condition(mask, values)
        mean, cov = conditional.moments()
        exact = {"weight": left_mass(conditional, SPLIT), "mean": mean[0].item(), "std": math.sqrt(cov[0, 0].item())}
        for steps in args.steps:
            for method, sampler in (("conditional score", "sde"), ("replacement", "sde"), ("replacement", "ddpm")):
                stats, start = [], time.perf_counter()
                for seed in range(args.seeds):
                    gen = torch.Generator().manual_seed(seed)
                    sample = dc.sample_sde if sampler == "sde" else dc.sample_ddpm
                    if method == "conditional score":
                        x = sample(conditional.score_fn(sde), sde, shape, steps=steps, generator=gen)
                    else:
                        project = dc.replacement_inpainting(sde, values, mask, generator=gen)
                        x = sample(mixture.score_fn(sde), sde, shape, steps=steps, project=project, generator=gen)
                    u = x[:, 0]
                    stats.append({"weight": (u < SPLIT).double().mean().item(), "mean": u.mean().item(),
                                  "std": u.std().item(), "known": (x[:, 1] - value).abs().max().item()})
                row = {"y": value, "method": method, "sampler": sampler, "steps": steps,
                       "seconds_per_run": (time.perf_counter() - start) / args.seeds, "exact": exact}
                for key in ("weight", "mean", "std", "known"):
                    vals = torch.tensor([s[key] for s in stats])
                    row[key] = vals.mean().item()
                    row[key + "_spread"] = vals.std().item() if len(vals) > 1 else float("nan")
                rows.append(row)
                if not args.quiet:
                    print(value, method, sampler, steps, {k: round(row[k], 4) for k in ("weight", "mean", "std")}, exact)
    return {"rows": rows}


def markdown(record: dict) -> str:
    """continuous_inpainting.md from a continuous_inpainting.json record."""
    args, rows = harness.recorded(record), record["rows"]
    se_weight = max(math.sqrt(r["exact"]["weight"] * (1 - r["exact"]["weight"]) / args.samples) for r in rows)
    se_mean = max(r["exact"]["std"] / math.sqrt(args.samples) for r in rows)
    lines = [
        f"# Inpainting: conditional score vs replacement ({args.samples} samples x {args.seeds} seeds, VP)",
        "",
        "x[1] = y known, x[0] sampled; mode weight = P(x[0] < 0.4). Each cell: mean over seeds (spread across "
        "seeds); error = seed-mean minus exact. One seed's Monte Carlo standard error: at most "
        f"{se_weight:.4f} on the weight and {se_mean:.4f} on the mean.",
        "",
        "| y | method | sampler | steps | weight (exact) | weight error | mean (exact) | mean error | std error "
        "| max \\|x[1] − y\\| | s per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ex = r["exact"]
        lines.append(
            f"| {r['y']:g} | {r['method']} | {r['sampler']} | {r['steps']} | {r['weight']:.4f} ({ex['weight']:.4f}) "
            f"| {r['weight'] - ex['weight']:+.4f} (±{r['weight_spread']:.4f}) | {r['mean']:.3f} ({ex['mean']:.3f}) "
            f"| {r['mean'] - ex['mean']:+.3f} (±{r['mean_spread']:.3f}) | {r['std'] - ex['std']:+.3f} "
            f"| {r['known']:.1e} | {r['seconds_per_run']:.1f} |"
        )
    lines += ["", f"Machine: {record['machine']}, float64."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--values", type=float, nargs="+", default=[0.0, -1.0])
    parser.set_defaults(threads=1)
    return harness.parse(parser, argv)


def main():
    args = parse_args()
    harness.report("continuous_inpainting", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
