"""The ``ddlm`` command line."""

from __future__ import annotations

import argparse
import time

import torch


def demo(args: argparse.Namespace) -> None:
    """Sample a known distribution with every predictor and bound its likelihood, against exact answers."""
    from . import Absorbing, Geometric, LogLinear, SequenceOracle, Uniform
    from .likelihood import nll_bound
    from .sampling import PREDICTORS, sample

    generator = torch.Generator().manual_seed(args.seed)
    setups = {"absorbing": (Absorbing(args.tokens), LogLinear()), "uniform": (Uniform(args.tokens), Geometric())}
    for name, (graph, noise) in setups.items():
        oracle = SequenceOracle.random(graph, args.length, generator)
        exact_tv = oracle.total_variation(oracle.sample(args.samples, generator))
        print(f"\n{name}: {graph!r}, {type(noise).__name__}, a random distribution over {args.tokens}^{args.length} sequences")
        print(f"  total variation of {args.samples} exact draws: {exact_tv:.4f}")
        for predictor in PREDICTORS:
            start = time.perf_counter()
            x = sample(oracle.score_fn, graph, noise, (args.samples, args.length), args.steps, predictor, generator=generator, progress=False)
            print(f"  {predictor:>11} ({args.steps} steps): TV {oracle.total_variation(x):.4f}  [{time.perf_counter() - start:.1f} s]")
        x0 = oracle.sample(3, generator)
        bound = nll_bound(oracle.score_fn, graph, LogLinear(), x0, num_t=args.num_t, generator=generator, batch_size=3 * args.num_t)
        print(f"  likelihood bound (exact ratios, LogLinear, {args.num_t} stratified t = u^2, default base):")
        for i in range(3):
            true_nll = -oracle.log_prob(x0[i]).item()
            print(f"    {x0[i].tolist()}: bound {bound.bound[i]:.3f} +- {bound.stderr[i]:.3f} nats"
                  f" (integral {bound.integral[i]:.3f}, prior {bound.prior[i]:.4f}); true -log p = {true_nll:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models (score entropy).")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="samplers and likelihood bound against an exact oracle (CPU, seconds)")
    p.add_argument("--tokens", type=int, default=3, help="real tokens N of the toy distribution")
    p.add_argument("--length", type=int, default=3, help="sequence length L")
    p.add_argument("--samples", type=int, default=20_000, help="samples per predictor")
    p.add_argument("--steps", type=int, default=128, help="sampling steps")
    p.add_argument("--num-t", type=int, default=1024, help="t samples of the likelihood bound")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    args.run(args)
