"""Score-entropy loss, forward + backward: time and peak extra memory against eager baselines.

Absorbing graph (SEDD's default), log-scores [N, V] with half the positions masked, sigma_bar
uniform in [0.01, 3]. Candidates:

- ``sedd_eager``: the SEDD absorbing formula restated in eager PyTorch (boolean row indexing,
  ``[:, :-1]`` slice, exp, gather) -- the baseline;
- ``sedd_compiled``: ``torch.compile`` of the same function;
- ``ddlm_eager``: ``ddlm.losses.dse(impl="eager")``;
- ``ddlm_torch``: ``ddlm.losses.dse(impl="torch")``, row chunks in a custom autograd function;
- ``ddlm_torch_inplace``: the same with ``inplace=True`` (the gradient overwrites the log-scores);
- ``ddlm_triton`` / ``ddlm_triton_inplace``: the fused kernel (CUDA only).

Times: all candidates in one process, interleaved, median of --repeats, reported as ratios to
sedd_eager. Peak extra memory (bytes above the log-scores themselves): on CUDA from
``torch.cuda.max_memory_allocated`` in the same process; on CPU from the peak resident set size
(VmHWM) of a fresh subprocess per candidate (large CPU blocks are mmapped, so RSS follows live tensors).
With ``--hidden D`` the output head is included: ``sedd_eager`` of ``hidden @ weight.T`` against
``ddlm.losses.linear_dse`` (logits one chunk at a time). Writes
benchmarks/results/kernels[_head]_<device>.json and .md (device: cuda when there is one, else cpu).

    python benchmarks/fused_loss.py [--rows 8192 16384] [--vocab 50258] [--dtype float32] [--hidden 768]
    python benchmarks/fused_loss.py --report-only [--hidden 768] [--device cpu]   # a table again from its JSON
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import harness
import torch

import ddlm
from ddlm.core.losses import dse, linear_dse

GRAPH_TOKENS = 50257


def sedd_absorbing_loss(log_score, sigma, x_t, x0):
    """SEDD's absorbing score entropy per position, as its code computes it (eager, whole tensors)."""
    mask_id = log_score.shape[-1] - 1
    rel = x_t == mask_id
    esigm1 = torch.where(sigma < 0.5, torch.expm1(sigma), torch.exp(sigma) - 1)
    ratio = 1 / esigm1.expand_as(x_t)[rel]
    other = x0[rel]
    neg = ratio * torch.gather(log_score[rel], -1, other[..., None]).squeeze(-1)
    pos = log_score[rel][:, :-1].exp().sum(-1)
    const = ratio * (ratio.log() - 1)
    entropy = torch.zeros(*x_t.shape, device=log_score.device, dtype=log_score.dtype)
    entropy[rel] += pos - neg + const
    return entropy


def make_problem(rows, vocab, dtype, device, hidden=0, seed=0):
    """(graph, inputs, x_t, x0, sigma): inputs are (log_score [N, V],) or, with hidden = D > 0,
    (hidden [N, D], weight [V, D]) of an output head."""
    gen = torch.Generator().manual_seed(seed)
    graph = ddlm.Absorbing(vocab - 1)
    x0 = torch.randint(vocab - 1, (rows,), generator=gen)
    x_t = torch.where(torch.rand(rows, generator=gen) < 0.5, torch.full_like(x0, graph.mask_id), x0)
    sigma = 0.01 + 3 * torch.rand(rows, generator=gen, dtype=torch.float64)
    if hidden:
        inputs = (torch.randn(rows, hidden, generator=gen).to(dtype), (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(dtype))
    else:
        inputs = (torch.randn(rows, vocab, generator=gen).mul_(0.5).sub_(6).to(dtype),)  # no temporaries
    return graph, tuple(t.to(device) for t in inputs), x_t.to(device), x0.to(device), sigma.to(device)


def candidates(device, head=False):
    if head:  # output head + loss: logits = hidden @ weight.T
        return {
            "sedd_eager": lambda g, h, w, x_t, x0, sig: sedd_absorbing_loss(h @ w.t(), sig.to(h.dtype), x_t, x0),
            "ddlm_linear_dse": lambda g, h, w, x_t, x0, sig: linear_dse(h, w, None, x_t, x0, sig, g),
        }
    compiled = torch.compile(sedd_absorbing_loss)
    out = {
        "sedd_eager": lambda g, s, x_t, x0, sig: sedd_absorbing_loss(s, sig.to(s.dtype), x_t, x0),
        "sedd_compiled": lambda g, s, x_t, x0, sig: compiled(s, sig.to(s.dtype), x_t, x0),
        "ddlm_eager": lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="eager"),
        "ddlm_torch": lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="torch"),
        "ddlm_torch_inplace": lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="torch", inplace=True),
    }
    if device.type == "cuda":
        out["ddlm_triton"] = lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="triton")
        out["ddlm_triton_inplace"] = lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="triton", inplace=True)
    return out


def run_once(fn, graph, inputs, x_t, x0, sigma):
    """Forward + backward; in-place candidates overwrite their input, so pass copies to reuse it."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    fn(graph, *leaves, x_t, x0, sigma).sum().backward()
    return leaves[0].grad


def rss(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, bytes (Linux). VmHWM, unlike ru_maxrss, does
    not carry over the parent's peak into a subprocess."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure_cpu_memory(name, rows, vocab, dtype, hidden):
    """Run one candidate in this (fresh) process; print peak RSS above the inputs, in bytes."""
    device = torch.device("cpu")
    problem = make_problem(rows, vocab, dtype, device, hidden)
    fn = candidates(device, bool(hidden))[name]
    run_once(fn, *make_problem(64, vocab, dtype, device, hidden))  # warm-up (compilation) outside the peak
    base = rss("VmRSS")
    run_once(fn, *problem)
    print(json.dumps({"peak_extra": rss("VmHWM") - base}))


def measure(args) -> dict:
    """Median time (s) and peak extra memory (bytes) of each candidate, for each number of rows."""
    dtype, device, head = getattr(torch, args.dtype), torch.device(args.device), bool(args.hidden)
    fns = candidates(device, head)
    names = list(fns)
    out = []
    for rows in args.rows:
        problem = make_problem(rows, args.vocab, dtype, device, args.hidden)
        for fn in fns.values():
            run_once(fn, *make_problem(64, args.vocab, dtype, device, args.hidden))  # compile / warm up
        times = {name: [] for name in names}
        graph, inputs, rest = problem[0], problem[1], problem[2:]
        for _ in range(args.repeats):
            for name in names:
                copy = tuple(t.clone() for t in inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run_once(fns[name], graph, copy, *rest)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        for name in names:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                copy = tuple(t.clone() for t in inputs)
                base = torch.cuda.memory_allocated()
                run_once(fns[name], graph, copy, *rest)
                memory = torch.cuda.max_memory_allocated() - base
            else:
                result = subprocess.run([sys.executable, __file__, "--vocab", str(args.vocab), "--dtype", args.dtype, "--hidden",
                                         str(args.hidden), "--memory-of", name, str(rows)], capture_output=True, text=True, check=True)
                memory = json.loads(result.stdout.strip().splitlines()[-1])["peak_extra"]
            out.append({"rows": rows, "candidate": name, "time": statistics.median(times[name]), "memory": memory})
            if not args.quiet:
                print(out[-1], flush=True)
        del problem
    return {"rows": out}


def markdown(record: dict) -> str:
    """kernels[_head]_<device>.md from its JSON record (ratios to sedd_eager at the same number of rows)."""
    args = harness.recorded(record)
    head = bool(args.hidden)
    lines = [
        f"# Score entropy forward + backward, Absorbing, V = {args.vocab}, {args.dtype}"
        + (f", output head from D = {args.hidden} included" if head else " log-scores"),
        f"Machine: {record['machine']}. Ratios are to sedd_eager (time: > 1 is slower; memory: peak bytes",
        f"above the inputs, {'gradients' if head else 'the [N, V] gradient'} included).",
        "",
        f"Beyond the gradient: the peak less the {'gradients of hidden and weight' if head else '[N, V] gradient'} "
        "(the least any out-of-place backward must allocate; in place the gradient is written over the inputs, so nothing is "
        "subtracted), and its ratio to sedd_eager's.",
        "",
        "| N | candidate | time (s) | time / sedd_eager | peak extra memory (GB) | memory / sedd_eager | beyond the gradient (GB) "
        "| beyond / sedd_eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {r["rows"]: r for r in record["rows"] if r["candidate"] == "sedd_eager"}
    ratio = lambda a, b: f"{a / b:.2f}" if b > 0 else "-"  # noqa: E731 (a tiny run's baseline may allocate nothing)
    for r in record["rows"]:
        b, floor = base[r["rows"]], gradient_bytes(r["rows"], args.vocab, args.hidden, args.dtype)
        beyond = r["memory"] - (0 if r["candidate"].endswith("_inplace") else floor)
        lines.append(f"| {r['rows']} | {r['candidate']} | {r['time']:.3f} | {ratio(r['time'], b['time'])} | "
                     f"{r['memory'] / 1e9:.2f} | {ratio(r['memory'], b['memory'])} | {beyond / 1e9:.2f} | "
                     f"{ratio(beyond, b['memory'] - floor)} |")
    return "\n".join(lines) + "\n"


def gradient_bytes(rows: int, states: int, hidden: int, dtype: str) -> int:
    """Bytes of the inputs' gradients (the inputs' own sizes), the least an out-of-place backward allocates: log-scores
    [N, V] (hidden = 0), or hidden [N, D] and weight [V, D]; dtype by name."""
    size = torch.finfo(getattr(torch, dtype)).bits // 8
    return size * (rows * hidden + states * hidden if hidden else rows * states)


def results_name(args) -> str:
    return f"kernels{'_head' if args.hidden else ''}_{torch.device(args.device).type}"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--vocab", type=int, default=GRAPH_TOKENS + 1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=0, help="D > 0: benchmark the output head [D -> V] + loss instead")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--memory-of", nargs=2, metavar=("NAME", "ROWS"), help=argparse.SUPPRESS)
    args = harness.parse(parser, argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main():
    args = parse_args()
    if args.memory_of:
        measure_cpu_memory(args.memory_of[0], int(args.memory_of[1]), args.vocab, getattr(torch, args.dtype), args.hidden)
        return
    harness.report(results_name(args), args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
