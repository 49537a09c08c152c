"""Variance of the diffusion training loss and its gradient at fixed weights, by time sampling (train.t_sampling,
train.t_importance).

A trained absorbing model (default runs/sampling/absorbing/final, the quickstart-size model of
benchmarks/sampling.py; dropout off, so the only noise is the data, t and x_t) scores batches of 32
held-out blocks. For each scheme, with the same batches for every scheme:
  * the standard deviation over steps of the batch-mean loss, with fresh batches each step (what the
    training curve shows) and with one fixed batch (t and x_t the only noise);
  * the gradient's total variance, trace Cov(g), over steps on the fixed batch.
Each scheme draws its times exactly as the training loop does (``batch_uniforms`` over the batch,
``training_times``). Writes benchmarks/results/t_sampling.md and .json.

    OMP_NUM_THREADS=1 python benchmarks/t_sampling.py [--model runs/sampling/absorbing/final] [--loss-steps 48] [--grad-steps 12]
    python benchmarks/t_sampling.py --report-only   # the table again from t_sampling.json
"""

import math
import pathlib
import time

import harness
import torch

from ddlm import DDLMForDiffusion
from ddlm.core.losses import dwdse_loss
from ddlm.evaluation import load_tokenizer
from ddlm.likelihood import batch_uniforms, training_times

SCHEMES = [("iid", None), ("stratified", None), ("antithetic", None), ("iid", "power"), ("stratified", "power")]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def batch_loss(model, x0, method, importance, power, t_min, generator):
    """The training loss of one batch (mean over sequences, nats per token) with its times drawn by the scheme."""
    t, weights = training_times(batch_uniforms(x0.shape[0], method, generator), t_min, importance, power)
    return dwdse_loss(model, model.graph, model.noise, x0, t_min, generator, t=t, weights=weights).mean()


def robust_std(values: torch.Tensor) -> float:
    """The interquartile range / 1.349: the standard deviation for normal data, blind to a few outliers."""
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype))
    return float(q3 - q1) / 1.349


def measure(args) -> dict:
    """Loss and gradient spread per scheme, on the same batches: the t_sampling.json record's numbers."""
    torch.manual_seed(0)
    model = DDLMForDiffusion.from_pretrained(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    length = model.config.max_position_embeddings
    ids = torch.tensor(tokenizer(pathlib.Path(args.text).read_text(encoding="utf-8"))["input_ids"])
    blocks = ids[: ids.numel() // length * length].view(-1, length)
    picks = torch.Generator().manual_seed(1)
    fresh = [blocks[torch.randperm(blocks.shape[0], generator=picks)[: args.batch]] for _ in range(args.loss_steps)]
    fixed = fresh[0]
    params = [p for p in model.parameters() if p.requires_grad]
    rows, start = [], time.perf_counter()
    for method, importance in SCHEMES:
        power = args.power if importance else 2.0
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            fresh_losses = torch.stack([batch_loss(model, x, method, importance, power, args.t_min, generator) for x in fresh])
            fixed_losses = torch.stack([batch_loss(model, fixed, method, importance, power, args.t_min, generator) for _ in fresh])
        grads = []
        for _ in range(args.grad_steps):
            model.zero_grad(set_to_none=True)
            batch_loss(model, fixed, method, importance, power, args.t_min, generator).backward()
            grads.append(torch.cat([p.grad.reshape(-1).double() for p in params]))
        grads = torch.stack(grads)
        row = {"t_sampling": method, "t_importance": f"power {power:g}" if importance else "none",
               "loss_mean_fresh": float(fresh_losses.mean()), "loss_std_fresh": float(fresh_losses.std()),
               "loss_mean_fixed": float(fixed_losses.mean()), "loss_std_fixed": float(fixed_losses.std()),
               "loss_robust_std_fixed": robust_std(fixed_losses), "loss_max_fixed": float(fixed_losses.max()),
               "grad_total_variance": float(grads.var(0).sum()), "grad_mean_norm": float(grads.mean(0).norm()),
               "losses_fresh": fresh_losses.tolist(), "losses_fixed": fixed_losses.tolist()}
        rows.append(row)
        if not args.quiet:
            print(row, flush=True)
    iid = rows[0]
    for row in rows:
        for key in ("loss_std_fresh", "loss_std_fixed", "loss_robust_std_fixed", "grad_total_variance"):
            row[key + "_vs_iid"] = row[key] / iid[key]
    model_path = pathlib.Path(args.model)
    return {"model": str(model_path.relative_to(ROOT)) if model_path.is_relative_to(ROOT) else args.model,
            "params": sum(p.numel() for p in params), "length": length, "seconds": time.perf_counter() - start, "rows": rows}


def markdown(record: dict) -> str:
    """t_sampling.md from a t_sampling.json record."""
    args, rows = harness.recorded(record), record["rows"]
    std_rel = 1 / math.sqrt(2 * (args.loss_steps - 1))  # relative standard error of a standard deviation (normal data)
    var_rel = math.sqrt(2 / (args.grad_steps - 1))
    lines = [
        f"# Training-loss variance by time sampling (batch {args.batch}, fixed weights; {record['machine']})",
        "",
        f"Model `{record['model']}` "
        f"({record['params'] / 1e6:.2f}M parameters, absorbing, blocks of {record['length']}), dropout off, "
        f"t_min = {args.t_min:g}. Loss: standard deviation of the batch-mean loss (nats/token) over {args.loss_steps} steps, "
        f"fresh held-out batches each step (the same batches for every scheme) or one fixed batch; each standard deviation "
        f"carries a relative standard error of about {100 * std_rel:.0f}%. Gradient: trace of the gradient's covariance over "
        f"{args.grad_steps} draws on the fixed batch (relative standard error about {100 * var_rel:.0f}%). "
        f"Robust std: interquartile range / 1.349 of the fixed-batch losses (the loss is heavy-tailed; the largest is shown). "
        f"{record['seconds']:.0f} s in all. `OMP_NUM_THREADS=1 python benchmarks/t_sampling.py`",
        "",
        "| t_sampling | t_importance | mean loss | loss std, fresh batches | vs iid | loss std, fixed batch | vs iid "
        "| robust std, fixed | vs iid | largest, fixed | gradient variance | vs iid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['t_sampling']} | {r['t_importance']} | {r['loss_mean_fresh']:.3f} | {r['loss_std_fresh']:.4f} | "
          f"{r['loss_std_fresh_vs_iid']:.2f} | {r['loss_std_fixed']:.4f} | {r['loss_std_fixed_vs_iid']:.2f} | "
          f"{r['loss_robust_std_fixed']:.4f} | {r['loss_robust_std_fixed_vs_iid']:.2f} | {r['loss_max_fixed']:.3f} | "
          f"{r['grad_total_variance']:.4g} | {r['grad_total_variance_vs_iid']:.2f} |" for r in rows],
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default=str(ROOT / "runs/sampling/absorbing/final"))
    parser.add_argument("--text", default=str(ROOT / "runs/sampling/heldout.txt"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--loss-steps", type=int, default=48)
    parser.add_argument("--grad-steps", type=int, default=12)
    parser.add_argument("--power", type=float, default=2.0)
    parser.add_argument("--t-min", type=float, default=1e-3)
    return harness.parse(parser, argv)


def main():
    args = parse_args()
    harness.report("t_sampling", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
