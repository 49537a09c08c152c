"""How far guidance with gamma != 1 is from the "sharpened" law p(x | c)^gamma p(x)^(1 - gamma), per predictor.

Exact ingredients: a random class-conditional distribution over 3^3 sequences (two classes, uniform
prior; ``ddlm.oracle.ConditionalSequenceOracle``), its exact conditional and unconditional ratios
and its exact noisy classifier. With exact parts classifier-free guidance at scale gamma and
classifier guidance at scale gamma give the same scores (log s_c - log s_u = log p_t(c | y) -
log p_t(c | x) by Bayes' rule), so one column covers both. For each process, predictor and gamma,
``--samples`` draws of ``guided_model_score``; the table gives the total variation to the sharpened
law, to p(x | c), and the mean classifier probability p(c | x0) of the draws (p(x | c) and the
sharpened law have their exact values in the header rows). TV of the same number of exact draws:
the noise floor. LogLinear schedule. Writes benchmarks/results/guidance_oracle.md (+ .json).

    python benchmarks/guidance_oracle.py [--samples 50000]
    python benchmarks/guidance_oracle.py --report-only   # the table again from guidance_oracle.json
"""

import time

import harness
import torch

import ddlm
from ddlm.sampling import sample
from ddlm.sampling.guidance import guided_model_score
from ddlm.theory.oracle import ConditionalSequenceOracle

SETTINGS = {  # predictor, steps, extra keywords
    "Absorbing(3)": [("confidence", 3, {"confidence": "random"}), ("first_hitting", 1, {}), ("analytic", 64, {}),
                     ("euler", 256, {}), ("tau_leaping", 256, {})],
    "Uniform(3)": [("analytic", 128, {}), ("euler", 256, {}), ("tau_leaping", 256, {})],
}


def mean_posterior(oracle: ConditionalSequenceOracle, law: torch.Tensor, label: int) -> float:
    """E p(c | x0) under a law over the clean sequences [N^L]."""
    posterior = oracle.log_posterior(oracle.unconditional.sequences, 0.0)[:, label].exp()
    return float((law.reshape(-1) * posterior).sum())


def empirical(oracle: ConditionalSequenceOracle, x: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(oracle.unconditional._codes(x, oracle.graph.num_tokens), minlength=oracle.graph.num_tokens ** 3)
    return counts.double() / x.shape[0]


def measure(args) -> dict:
    """TV to the sharpened law and to p(x | c), and E p(c | x0), per process, gamma and predictor."""
    label, rows = 1, []
    for graph in [ddlm.Absorbing(3), ddlm.Uniform(3)]:
        oracle = ConditionalSequenceOracle.random(graph, 3, 2, torch.Generator().manual_seed(0))
        exact = oracle.conditional(label)
        floor = exact.total_variation(exact.sample(args.samples, torch.Generator().manual_seed(1)))
        for scale in args.scales:
            target = oracle.sharpened(label, scale)
            for predictor, steps, extra in SETTINGS[repr(graph)]:
                start = time.perf_counter()
                x = sample(guided_model_score(oracle.score_fn, label, scale, num_classes=2), graph, ddlm.LogLinear(),
                           (args.samples, 3), steps, predictor, generator=torch.Generator().manual_seed(2), progress=False,
                           **extra)
                law = empirical(oracle, x)
                rows.append({"process": repr(graph), "gamma": scale, "predictor": predictor, "steps": steps,
                             "tv_sharpened": target.total_variation(x), "tv_conditional": exact.total_variation(x),
                             "p_c": mean_posterior(oracle, law, label), "p_c_sharpened": mean_posterior(oracle, target.probs, label),
                             "p_c_conditional": mean_posterior(oracle, exact.probs, label), "tv_exact_draws": floor,
                             "seconds": time.perf_counter() - start})
                if not args.quiet:
                    print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    return {"rows": rows}


def markdown(record: dict) -> str:
    """guidance_oracle.md from a guidance_oracle.json record."""
    args = harness.recorded(record)
    lines = [
        f"# Guidance with gamma != 1 against the sharpened law ({args.samples} draws; 2-class oracle over 3^3 sequences)",
        "",
        f"Machine: {record['machine']}. Exact ratios; "
        "confidence uses random order and one position per step (exact sequential sampling).",
        "",
        "| process | gamma | predictor | steps | TV to sharpened | TV to p(x\\|c) | E p(c\\|x0) | sharpened: E p(c\\|x0) | p(x\\|c): E p(c\\|x0) | TV of exact draws |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['process']} | {r['gamma']:g} | {r['predictor']} | {r['steps']} | {r['tv_sharpened']:.4f} | "
                     f"{r['tv_conditional']:.4f} | {r['p_c']:.4f} | {r['p_c_sharpened']:.4f} | {r['p_c_conditional']:.4f} | "
                     f"{r['tv_exact_draws']:.4f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 2.0, 4.0])
    return harness.parse(parser, argv)


def main():
    args = parse_args()
    harness.report("guidance_oracle", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
