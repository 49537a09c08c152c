"""Everything a GPU decides, in one command: fused loss, fused head, training MFU, sampling, evaluation.

Sections (``--sections`` picks some; each figure has its baseline measured in the same process):

- ``loss``: score entropy (absorbing, log-scores [N, V + 1], V = 50257, half the positions masked),
  forward + backward, N = 8k..64k rows, float32 and bfloat16. Candidates: ``sedd_eager`` (SEDD's
  formula, ``fused_loss.sedd_absorbing_loss``; the baseline), ``sedd_compiled`` (``torch.compile`` of
  it), ``ddlm_torch`` (row chunks), ``ddlm_triton`` and ``ddlm_triton_inplace`` (the fused kernel).
  Time (median), peak memory above the inputs (``torch.cuda.max_memory_allocated``), achieved
  bandwidth = 2 N (V + 1) bytes-per-element / time (the least traffic of forward + backward: read
  the log-scores once, write their gradient once) against the device's HBM peak.
- ``head``: the output head D = 768 -> V + 1 and the loss: ``sedd_eager`` of ``hidden @ weight.T``
  (the baseline), ``head_triton`` (the logits, then ``dse(impl="triton")``) and ``linear_dse`` (the fused
  head, logits one chunk at a time); time, peak memory, achieved TFLOP/s (6 N D (V + 1): three matmuls).
- ``train``: tokens/s and MFU of a training step (loss, backward, AdamW; bf16 autocast) of the
  SEDD-small-shaped diffusion model (768 x 12, 12 heads, vocabulary 50257, L = 1024) against HF
  ``GPT2LMHeadModel`` of the same width and depth (the baseline), each eager and ``torch.compile``d,
  and the AR objective on ddlm's network (models from ``train_throughput.build``). MFU = tokens/s x
  (6 P + 12 layers hidden L) / peak bf16 dense FLOP/s; P = parameters that multiply (all but the
  input embedding tables; a tied output head counted), 12 layers hidden L the attention scores and
  values, forward + backward, unhalved for causal attention.
- ``sampling``: ``ddlm.sampling.sample`` time / (network calls x one bare forward of the same [B, L])
  for SEDD-small (random weights), B = 1 and 32, L = 1024, bf16 autocast: absorbing analytic,
  first-hitting with the score cache (a time-independent absorbing network, the last
  ``fh_masked`` positions masked and the rest clamped, so each run is fh_masked events), uniform
  analytic; and ``DiffusionPipeline.generate`` tokens/s against ``sample`` of the same run.
- ``eval``: ``ddlm.evaluation.score_texts`` (what ``ddlm eval`` runs; float32) of one text of 64 blocks:
  the dataset estimator (1 t per block) and the per-text estimator (2 t per block), tokens/s against
  bare forwards of the same batch size.

Peaks come from a table of known devices by name (DEVICES below: HBM bandwidth and dense bf16
FLOP/s from the vendors' data sheets); an unknown device gets "n/a". A failing section records its
error and the others still run; ``--budget-s`` skips the sections that would start after it.
Writes benchmarks/results/gpu.json and gpu.md (device, driver, torch / triton / CUDA versions).

    python benchmarks/gpu_suite.py [--sections loss head train sampling eval] [--budget-s 480]
    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python benchmarks/gpu_suite.py --dry-run --results DIR   # tiny shapes on CPU
    python benchmarks/gpu_suite.py --report-only [--results DIR]   # the tables again from gpu.json
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # the Triton kernels run in the CPU interpreter; it must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import fused_loss  # noqa: E402
import harness  # noqa: E402
import torch  # noqa: E402
import train_throughput  # noqa: E402

NAME = "gpu"
# name fragment -> (HBM bandwidth B/s, dense bf16 FLOP/s), first match wins (data sheets; "GH200" before "H200")
DEVICES = [("GH200", None, None), ("H100 PCIe", 2.0e12, 756e12), ("H100 NVL", 3.9e12, 835e12), ("H100", 3.35e12, 989e12),
           ("H200", 4.8e12, 989e12), ("A100 80GB", 2.0e12, 312e12), ("A100-SXM4-80GB", 2.0e12, 312e12),
           ("A100", 1.555e12, 312e12)]
SHAPES = {  # the GPU run, and the dry run's tiny shapes on CPU
    "gpu": dict(vocab=50257, rows=[8192, 16384, 32768, 65536], dtypes=["float32", "bfloat16"], repeats=5, head_hidden=768,
                hidden=768, layers=12, heads=12, length=1024, train_batch=16, train_steps=4, train_rounds=3, warmup=3,
                sample_batches=[1, 32], sample_steps=32, fh_masked=64, sample_repeats=3, eval_blocks=64, eval_batch=16,
                compile_backend="inductor"),
    "dry": dict(vocab=96, rows=[64], dtypes=["float32", "bfloat16"], repeats=1, head_hidden=16,
                hidden=32, layers=2, heads=2, length=16, train_batch=2, train_steps=1, train_rounds=2, warmup=1,
                sample_batches=[1, 2], sample_steps=2, fh_masked=3, sample_repeats=1, eval_blocks=3, eval_batch=2,
                compile_backend="eager"),
}
NO_CUDA = "no CUDA device: run with --dry-run on CPU"


def peaks(name: str | None) -> tuple[float | None, float | None]:
    """(HBM bytes/s, bf16 dense FLOP/s) of a device by name, (None, None) when not in DEVICES."""
    for fragment, bandwidth, flops in DEVICES:
        if name and fragment in name:
            return bandwidth, flops
    return None, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of fn(), CUDA synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def autocast(device: torch.device):
    """bf16 autocast on the device (the dry run too, so that the CPU run takes the same dtype paths)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def peak_memory(fn, device: torch.device) -> int | None:
    """Peak bytes allocated by fn() above what was allocated before it (CUDA); None on CPU."""
    if device.type != "cuda":  # no allocator statistics on CPU
        return None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def triton_ok(device: torch.device) -> bool:
    from ddlm.core.dse_backends import triton_available

    return triton_available(device)


def failure(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def make_problem(rows: int, states: int, dtype: torch.dtype, device: torch.device, hidden: int = 0, seed: int = 0):
    """``fused_loss.make_problem``'s problem, drawn on the device itself on CUDA (a CPU draw of 64k x 50k is slow)."""
    if device.type != "cuda":
        return fused_loss.make_problem(rows, states, dtype, device, hidden, seed)
    import ddlm

    gen = torch.Generator(device=device).manual_seed(seed)
    graph = ddlm.Absorbing(states - 1)
    x0 = torch.randint(states - 1, (rows,), generator=gen, device=device)
    x_t = torch.where(torch.rand(rows, generator=gen, device=device) < 0.5, torch.full_like(x0, graph.mask_id), x0)
    sigma = 0.01 + 3 * torch.rand(rows, generator=gen, dtype=torch.float64, device=device)
    if hidden:
        inputs = (torch.randn(rows, hidden, generator=gen, device=device).to(dtype),
                  (torch.randn(states, hidden, generator=gen, device=device) / hidden**0.5).to(dtype))
    else:
        inputs = (torch.randn(rows, states, generator=gen, device=device).mul_(0.5).sub_(6).to(dtype),)
    return graph, inputs, x_t, x0, sigma


def compare(candidates: dict, baseline: str, problem, device, repeats: int, say, skipped: dict) -> list[dict]:
    """Time (median of interleaved repeats, after one warm-up each at this shape) and peak memory of forward + backward
    of each candidate on one problem. A candidate that raises (out of memory on the largest shapes, a failed compile)
    gets an "error" row and drops out; the others go on."""
    graph, inputs, rest = problem[0], problem[1], problem[2:]
    rows = {name: {"candidate": name} for name in [*candidates, *skipped]}
    for name, why in skipped.items():
        rows[name]["skipped"] = why
    live = dict(candidates)

    def attempt(name, action):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - recorded in the candidate's row
            rows[name]["error"] = failure(error)
            live.pop(name, None)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    def once(fn):
        copy = tuple(t.clone() for t in inputs)  # in-place candidates overwrite theirs
        return lambda: fused_loss.run_once(fn, graph, copy, *rest)

    for name, fn in list(live.items()):
        attempt(name, lambda fn=fn: timed(once(fn), device))
    times = {name: [] for name in live}
    for _ in range(repeats):
        for name, fn in list(live.items()):
            took = attempt(name, lambda fn=fn: timed(once(fn), device))
            if took is not None:
                times[name].append(took)
    for name, fn in list(live.items()):
        memory = attempt(name, lambda fn=fn: peak_memory(once(fn), device))
        if name in live:
            rows[name].update(time=statistics.median(times[name]), memory=memory)
    base = rows[baseline].get("time")
    for row in rows.values():
        if "time" in row and base:
            row["time_ratio"] = row["time"] / base
    say(*(f"  {r}" for r in rows.values()), sep="\n", flush=True)
    return list(rows.values())


def loss_section(args, device, say) -> dict:
    """Fused score entropy, forward + backward: Triton and compile against SEDD's eager formula."""
    from ddlm.core.losses import dse

    shapes = args.shapes
    compiled = torch.compile(fused_loss.sedd_absorbing_loss, backend=shapes["compile_backend"])
    candidates = {
        "sedd_eager": lambda g, s, x_t, x0, sig: fused_loss.sedd_absorbing_loss(s, sig.to(s.dtype), x_t, x0),
        "sedd_compiled": lambda g, s, x_t, x0, sig: compiled(s, sig.to(s.dtype), x_t, x0),
        "ddlm_torch": lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="torch"),
    }
    skipped = {}
    if triton_ok(device):
        candidates["ddlm_triton"] = lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="triton")
        candidates["ddlm_triton_inplace"] = lambda g, s, x_t, x0, sig: dse(s, x_t, x0, sig, g, impl="triton", inplace=True)
    else:
        skipped = {"ddlm_triton": "triton not importable", "ddlm_triton_inplace": "triton not importable"}
    bandwidth, _ = peaks(args.device_name)
    states = shapes["vocab"] + 1
    rows = []
    for dtype_name in shapes["dtypes"]:
        dtype = getattr(torch, dtype_name)
        for n in shapes["rows"]:
            say(f"loss: {dtype_name}, N = {n}, V + 1 = {states}", flush=True)
            problem = make_problem(n, states, dtype, device)
            moved = 2 * n * states * torch.finfo(dtype).bits // 8
            for row in compare(candidates, "sedd_eager", problem, device, shapes["repeats"], say, skipped):
                if "time" in row:
                    row["bandwidth"] = moved / row["time"]
                    row["bandwidth_fraction"] = row["bandwidth"] / bandwidth if bandwidth else None
                rows.append({"dtype": dtype_name, "rows": n, "states": states, **row})
            del problem
    return {"rows": rows, "baseline": "sedd_eager", "peak_bandwidth": bandwidth}


def head_section(args, device, say) -> dict:
    """The fused output head (linear_dse) against head + loss."""
    from ddlm.core.losses import dse, linear_dse

    shapes = args.shapes
    triton = triton_ok(device)
    impl = "triton" if triton else "torch"
    candidates = {
        "sedd_eager": lambda g, h, w, x_t, x0, sig: fused_loss.sedd_absorbing_loss(h @ w.t(), sig.to(h.dtype), x_t, x0),
        f"head_{impl}": lambda g, h, w, x_t, x0, sig: dse(h @ w.t(), x_t, x0, sig, g, impl=impl),
        "linear_dse": lambda g, h, w, x_t, x0, sig: linear_dse(h, w, None, x_t, x0, sig, g, impl=impl),
    }
    skipped = {} if triton else {"head_triton": "triton not importable"}
    _, flops_peak = peaks(args.device_name)
    states, hidden = shapes["vocab"] + 1, shapes["head_hidden"]
    rows = []
    for dtype_name in shapes["dtypes"]:
        dtype = getattr(torch, dtype_name)
        for n in shapes["rows"]:
            say(f"head: {dtype_name}, N = {n}, D = {hidden}, V + 1 = {states}", flush=True)
            problem = make_problem(n, states, dtype, device, hidden)
            for row in compare(candidates, "sedd_eager", problem, device, shapes["repeats"], say, skipped):
                if "time" in row:
                    row["tflops"] = 6 * n * hidden * states / row["time"] / 1e12
                    row["flops_fraction"] = row["tflops"] * 1e12 / flops_peak if flops_peak and dtype_name == "bfloat16" else None
                rows.append({"dtype": dtype_name, "rows": n, "hidden": hidden, "states": states, **row})
            del problem
    return {"rows": rows, "baseline": "sedd_eager", "loss_impl": impl, "peak_flops": flops_peak}


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that multiply activations: all but the input embedding tables, plus a tied output head."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    count = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in embeddings:
        count += head.weight.numel()
    return count


def train_section(args, device, say) -> dict:
    """Training tokens/s and MFU: the diffusion model and the AR objective against HF GPT-2, eager and compiled."""
    from ddlm.core.losses import ar_loss, dwdse_loss

    shapes = args.shapes
    spec = argparse.Namespace(vocab=shapes["vocab"], hidden=shapes["hidden"], layers=shapes["layers"], heads=shapes["heads"],
                              length=shapes["length"], tie=False, impl="auto")
    eager, again = train_throughput.build(spec), train_throughput.build(spec)  # the same initial weights (seed 0) twice
    backend = shapes["compile_backend"]
    generator = torch.Generator(device=device).manual_seed(0)

    def diffusion(model, net):
        return lambda x0: dwdse_loss(net, model.graph, model.noise, x0, generator=generator).mean()

    def gpt2(net):
        return lambda x0: net(input_ids=x0, labels=x0).loss

    models = {"gpt2": eager["gpt2"][0], "gpt2_compiled": again["gpt2"][0], "ddlm_diffusion": eager["ddlm_diffusion"][0],
              "ddlm_diffusion_compiled": again["ddlm_diffusion"][0], "ddlm_ar": eager["ddlm_ar"][0]}
    del again["ddlm_ar"]
    for model in models.values():
        model.to(device)
    losses = {"gpt2": gpt2(models["gpt2"]), "gpt2_compiled": gpt2(torch.compile(models["gpt2_compiled"], backend=backend)),
              "ddlm_diffusion": diffusion(models["ddlm_diffusion"], models["ddlm_diffusion"]),
              "ddlm_diffusion_compiled": diffusion(models["ddlm_diffusion_compiled"],
                                                   torch.compile(models["ddlm_diffusion_compiled"], backend=backend)),
              "ddlm_ar": (lambda net: lambda x0: ar_loss(net, x0))(models["ddlm_ar"])}
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(shapes["vocab"], (shapes["train_batch"], shapes["length"]), generator=gen).to(device) for _ in range(4)]

    def with_autocast(loss_fn):
        def step(x0):
            with autocast(device):
                return loss_fn(x0)
        return step

    trainers = {name: train_throughput.Trainer(models[name], with_autocast(losses[name]), batches) for name in models}
    rows = {}
    for name, trainer in trainers.items():
        first = timed(lambda trainer=trainer: [trainer.step(record=False) for _ in range(shapes["warmup"])], device)
        rows[name] = {"candidate": name, "parameters": sum(p.numel() for p in models[name].parameters()),
                      "matmul_parameters": matmul_parameters(models[name]), "warmup_s": first}
        say(f"train: warmed up {name} ({first:.1f} s)", flush=True)
    per_step = {name: [] for name in trainers}
    for r in range(shapes["train_rounds"]):
        order = list(trainers.items())
        order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
        for name, trainer in order:
            per_step[name].append(timed(lambda trainer=trainer: [trainer.step(record=False) for _ in range(shapes["train_steps"])],
                                        device) / shapes["train_steps"])
    _, flops_peak = peaks(args.device_name)
    tokens = shapes["train_batch"] * shapes["length"]
    attention = 12 * shapes["layers"] * shapes["hidden"] * shapes["length"]
    for name, row in rows.items():
        row["step_s"] = statistics.median(per_step[name])
        row["tokens_per_s"] = tokens / row["step_s"]
        row["flops_per_token"] = 6 * row["matmul_parameters"] + attention
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / flops_peak if flops_peak else None
    for row in rows.values():
        row["ratio_to_gpt2"] = row["tokens_per_s"] / rows["gpt2"]["tokens_per_s"]
    say(*(f"  {r}" for r in rows.values()), sep="\n", flush=True)
    return {"rows": list(rows.values()), "baseline": "gpt2", "tokens_per_step": tokens, "peak_flops": flops_peak,
            "compile_backend": backend}


def network(shapes, process: str, time_conditioning: bool = True):
    """A SEDD-small-shaped (dry run: tiny) model on the device, random weights N(0, 0.02^2), eval mode."""
    from ddlm import DDLMConfig, DDLMForDiffusion

    config = DDLMConfig(process=process, vocab_size=shapes["vocab"], hidden_size=shapes["hidden"], num_hidden_layers=shapes["layers"],
                        num_attention_heads=shapes["heads"], max_position_embeddings=shapes["length"], dropout=0.0,
                        time_conditioning=time_conditioning)
    torch.manual_seed(0)
    model = DDLMForDiffusion(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def word_tokenizer(vocab: int):
    """A word-level tokenizer of exactly ``vocab`` entries w0 .. w{vocab-1} (no download: the GPU machine is offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="w0")


def median_forward(model, x, sigma, device, repeats: int = 3) -> float:
    model(x, sigma)
    return statistics.median(timed(lambda: model(x, sigma), device) for _ in range(repeats))


@torch.inference_mode()
def sampling_section(args, device, say) -> dict:
    """Sampler time over its network calls' bare forwards; DiffusionPipeline.generate tokens/s."""
    from ddlm.sampling import sample
    from ddlm.text.pipeline import DiffusionPipeline

    shapes = args.shapes
    length, steps, repeats = shapes["length"], shapes["sample_steps"], shapes["sample_repeats"]
    cases = [("absorbing", "analytic", True), ("absorbing", "first_hitting", False), ("uniform", "analytic", True)]
    nets = {}
    rows = []
    for process, predictor, conditioned in cases:
        key = (process, conditioned)
        model = nets.get(key) or nets.setdefault(key, network(shapes, process, conditioned).to(device))
        graph, noise = model.graph, model.noise
        for batch in shapes["sample_batches"]:
            x_init = fixed = None
            if predictor == "first_hitting":  # the last fh_masked positions free (masked), the rest clamped: fh_masked events
                gen = torch.Generator().manual_seed(2)
                x_init = torch.randint(graph.num_tokens, (batch, length), generator=gen).to(device)
                fixed = torch.arange(length, device=device).expand(batch, length) < length - shapes["fh_masked"]
            stats = {}

            def run(stats=stats, model=model, x_init=x_init, fixed=fixed):
                with autocast(device):
                    sample(model, graph, noise, (batch, length), steps, predictor, denoise=False, x_init=x_init, fixed=fixed,
                           generator=torch.Generator(device=device).manual_seed(0), device=device, progress=False,
                           stats=stats, cache=True if predictor == "first_hitting" else None)

            run()  # warm-up
            x = graph.sample_limit(batch, length, device=device)
            sigma = torch.ones(batch, dtype=torch.float64, device=device)
            times, forwards = [], []
            for _ in range(repeats):
                with autocast(device):
                    forwards.append(median_forward(model, x, sigma, device, 2))
                times.append(timed(run, device))
            calls, forward = stats["network_calls"], statistics.median(forwards)
            row = {"process": process, "predictor": predictor, "cache": bool(stats.get("cache")), "batch": batch, "length": length,
                   "steps": steps if predictor != "first_hitting" else None, "network_calls": calls, "forward_s": forward,
                   "sample_s": statistics.median(times)}
            row["ratio"] = row["sample_s"] / (calls * forward)
            row["tokens_per_s"] = batch * (length if predictor != "first_hitting" else shapes["fh_masked"]) / row["sample_s"]
            rows.append(row)
            say(f"  {row}", flush=True)
    model = nets[("absorbing", True)]
    pipe = DiffusionPipeline(model, word_tokenizer(shapes["vocab"]), device=device)
    batch = shapes["sample_batches"][-1]
    generated = []

    def generate():
        with autocast(device):
            generated[:] = pipe.generate(batch, length, steps, "analytic", progress=False,
                                         generator=torch.Generator(device=device).manual_seed(0))

    stats = {}

    def bare():
        with autocast(device):
            sample(model, model.graph, model.noise, (batch, length), steps, "analytic", denoise=True, stats=stats,
                   generator=torch.Generator(device=device).manual_seed(0), device=device, progress=False)

    generate(), bare()
    pairs = [(timed(generate, device), timed(bare, device)) for _ in range(repeats)]
    gen_s, bare_s = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    assert len(generated) == batch and all(generated), "generate returned no text"
    row = {"process": "absorbing", "predictor": "analytic (generate)", "cache": False, "batch": batch, "length": length,
           "steps": steps, "network_calls": stats["network_calls"], "forward_s": None, "sample_s": gen_s, "bare_sample_s": bare_s,
           "ratio": gen_s / bare_s, "tokens_per_s": batch * length / gen_s}
    rows.append(row)
    say(f"  {row}", flush=True)
    return {"rows": rows, "baseline": "network calls x one bare forward of [B, L] (generate: sample() of the same run)"}


def eval_section(args, device, say) -> dict:
    """`ddlm eval`'s scoring (ddlm.evaluation.score_texts) tokens/s against bare forwards of the same batch size."""
    from ddlm.evaluation import score_texts

    shapes = args.shapes
    length, blocks, batch = shapes["length"], shapes["eval_blocks"], shapes["eval_batch"]
    model = network(shapes, "absorbing").to(device)
    tokenizer = word_tokenizer(shapes["vocab"])
    gen = torch.Generator().manual_seed(3)
    text = " ".join(f"w{i}" for i in torch.randint(1, shapes["vocab"], (blocks * length,), generator=gen).tolist())
    x = torch.randint(shapes["vocab"], (batch, length), generator=gen).to(device)
    sigma = torch.ones(batch, dtype=torch.float64, device=device)
    with torch.inference_mode():
        forward = median_forward(model, x, sigma, device, shapes["sample_repeats"] + 2)
    forward_rate = batch * length / forward
    rows = []
    for estimator, num_t in (("dataset", 1), ("per-text", 2)):
        def run(estimator=estimator, num_t=num_t):
            return score_texts(model, tokenizer, [text], num_t, estimator=estimator, batch_size=batch, seed=0, progress=False)

        result = run()  # warm-up
        seconds = statistics.median(timed(run, device) for _ in range(shapes["sample_repeats"]))
        tokens = blocks * length
        row = {"estimator": estimator, "t_per_block": num_t, "blocks": blocks, "tokens": tokens, "batch": batch, "seconds": seconds,
               "tokens_per_s": tokens / seconds, "forward_tokens_per_s": forward_rate,
               "nats_per_token": float(result[0].bound) / tokens}
        row["ratio"] = row["tokens_per_s"] * num_t / forward_rate  # 1.0: as fast as the forwards it needs
        rows.append(row)
        say(f"  {row}", flush=True)
    return {"rows": rows, "baseline": f"bare forwards of [{batch}, {length}] (float32)"}


SECTIONS = {"loss": ("Fused score-entropy loss, forward + backward", loss_section),
            "head": ("Fused output head (linear_dse) against head + loss", head_section),
            "train": ("Training tokens/s and MFU against HF GPT-2", train_section),
            "sampling": ("Sampler time over bare forwards; generate tokens/s", sampling_section),
            "eval": ("`ddlm eval` throughput", eval_section)}


def versions(device: torch.device) -> dict:
    """Device name, driver, torch / triton / CUDA versions, and the peaks the figures are compared to."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name, driver = None, None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                    text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = None
    bandwidth, flops = peaks(name)
    return {"device": name or "cpu", "driver": driver, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "peak_bandwidth": bandwidth, "peak_bf16_flops": flops,
            "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1"}


def measure(args) -> dict:
    """Run the chosen sections, each guarded: an error is recorded and the next section runs."""
    device = torch.device(args.device)
    info = versions(device)
    args.device_name = info["device"] if device.type == "cuda" else None
    say = print if not args.quiet else (lambda *a, **k: None)
    began = time.perf_counter()
    sections = {}
    for name in args.sections:
        elapsed = time.perf_counter() - began
        if elapsed > args.budget_s:
            sections[name] = {"skipped": f"--budget-s {args.budget_s:g} spent ({elapsed:.0f} s) before it started", "rows": []}
            say(f"== {name}: skipped ({sections[name]['skipped']})", flush=True)
            continue
        say(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            sections[name] = SECTIONS[name][1](args, device, say)
        except Exception as error:  # noqa: BLE001 - a GPU window is precious: record it, run the rest
            sections[name] = {"rows": [], "error": f"{type(error).__name__}: {error}",
                              "traceback": traceback.format_exc().splitlines()[-12:]}
            say(f"== {name} failed: {sections[name]['error']}", flush=True)
        sections[name]["seconds"] = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"versions": info, "shapes": args.shapes, "sections": sections, "wall_s": time.perf_counter() - began}


def number(value, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value / scale, spec)


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def outcome(row: dict) -> str | None:
    return f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}" if "error" in row else None


def kernel_table(rows: list[dict], head: bool) -> list[str]:
    extra = ("TFLOP/s", "of bf16 peak") if head else ("GB/s", "of HBM peak")
    lines = [f"| dtype | N | candidate | time (ms) | time / sedd_eager | peak memory (GB) | beyond the gradient (GB) | "
             f"{extra[0]} | {extra[1]} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lead = f"| {r['dtype']} | {r['rows']} | {r['candidate']} |"
        if outcome(r):
            lines.append(f"{lead} {outcome(r)} | | | | | |")
            continue
        rate = number(r["tflops"], ".1f") if head else number(r["bandwidth"], ".0f", 1e9)
        share = percent(r["flops_fraction"] if head else r["bandwidth_fraction"])
        floor = 0 if r["candidate"].endswith("_inplace") else fused_loss.gradient_bytes(r["rows"], r["states"], r.get("hidden", 0), r["dtype"])
        beyond = None if r["memory"] is None else r["memory"] - floor  # in place the gradient is written over the inputs
        lines.append(f"{lead} {r['time'] * 1e3:.2f} | {number(r.get('time_ratio'), '.2f')} | {number(r['memory'], '.2f', 1e9)} | "
                     f"{number(beyond, '.2f', 1e9)} | {rate} | {share} |")
    return lines


def markdown(record: dict) -> str:
    """gpu.md from a gpu.json record."""
    v, shapes, args = record["versions"], record["shapes"], harness.recorded(record)
    lines = [
        f"# GPU suite{' (dry run: tiny shapes on CPU)' if args.dry_run else ''}",
        "",
        f"Machine: {record['machine']}. Device: {v['device']}, driver {v['driver'] or 'n/a'}, torch {v['torch']}, "
        f"triton {v['triton'] or 'not installed'}{' (TRITON_INTERPRET=1)' if v['triton_interpret'] else ''}, CUDA {v['cuda'] or 'n/a'}. "
        f"Peaks (the table of known devices by name in benchmarks/gpu_suite.py; n/a: not in it): HBM "
        f"{number(v['peak_bandwidth'], '.2f', 1e12)} TB/s, bf16 dense {number(v['peak_bf16_flops'], '.0f', 1e12)} TFLOP/s. "
        f"Total {record['wall_s']:.0f} s.",
        "",
        f"Command: `python benchmarks/gpu_suite.py{' --dry-run' if args.dry_run else ''} --sections {' '.join(args.sections)}`. "
        "Every figure is a median of repeats after warm-up, CUDA synchronised around each timing, its baseline measured in "
        "the same process.",
    ]
    for name, section in record["sections"].items():
        title = SECTIONS[name][0]
        lines += ["", f"## {name}: {title}", ""]
        if "skipped" in section or "error" in section:
            lines.append(f"Skipped: {section['skipped']}" if "skipped" in section else f"Error: `{section['error']}`")
            if not section["rows"]:
                continue
            lines.append("")
        rows = section["rows"]
        if name in ("loss", "head"):
            if name == "loss":
                lines += [f"Absorbing, log-scores [N, {shapes['vocab'] + 1}], half the positions masked. Baseline: sedd_eager. "
                          "Bandwidth: 2 N (V + 1) x element size (read the log-scores, write the gradient) / time. Beyond the gradient: "
                          "the peak less the [N, V + 1] gradient (nothing subtracted in place).", ""]
            else:
                lines += [f"hidden [N, {shapes['head_hidden']}] @ weight.T [{shapes['head_hidden']}, {shapes['vocab'] + 1}] and the "
                          f"loss ({section['loss_impl']} backend). Baseline: sedd_eager of the logits. TFLOP/s: 6 N D (V + 1) / "
                          "time (forward and two backward matmuls); the share of the bf16 peak for bfloat16 rows only. Beyond the "
                          "gradient: the peak less the gradients of hidden and weight.", ""]
            lines += kernel_table(rows, name == "head")
        elif name == "train":
            lines += [f"{shapes['hidden']} x {shapes['layers']}, {shapes['heads']} heads, vocabulary {shapes['vocab']}, L = "
                      f"{shapes['length']}, batch {shapes['train_batch']} ({section['tokens_per_step']} tokens a step); bf16 autocast, "
                      f"AdamW; compiled: torch.compile (backend {section['compile_backend']}). Median over {shapes['train_rounds']} "
                      f"rounds of {shapes['train_steps']} steps, candidates alternating. MFU = tokens/s x (6 P + 12 layers hidden L) "
                      "/ peak bf16 dense FLOP/s (P: parameters that multiply).", "",
                      "| candidate | parameters (M) | P (M) | warm-up (s) | step (ms) | tokens/s | ratio to gpt2 | MFU |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['candidate']} | {r['parameters'] / 1e6:.1f} | {r['matmul_parameters'] / 1e6:.1f} | {r['warmup_s']:.1f} | "
                             f"{r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {r['ratio_to_gpt2']:.2f} | {percent(r['mfu'])} |")
        elif name == "sampling":
            lines += ["Random weights; bf16 autocast; no final denoise (generate: with it). Ratio: sampler time / (network calls x "
                      "one bare forward of [B, L]); generate: its time / `sample` of the same run. First-hitting: score cache on "
                      f"(a time-independent network), the last {shapes['fh_masked']} positions masked, tokens/s of those.", "",
                      "| process | predictor | cache | B | L | steps | calls | forward (ms) | time (s) | ratio | tokens/s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['process']} | {r['predictor']} | {'on' if r['cache'] else 'off'} | {r['batch']} | {r['length']} | "
                             f"{r['steps'] or '-'} | {r['network_calls']} | {number(r['forward_s'], '.2f', 1e-3)} | {r['sample_s']:.3f} | "
                             f"{r['ratio']:.2f}x | {r['tokens_per_s']:,.0f} |")
        elif name == "eval":
            lines += [f"`ddlm.evaluation.score_texts` of one text of {rows[0]['blocks']} blocks of {shapes['length']} tokens, batch "
                      f"{rows[0]['batch']}, float32. Ratio: tokens/s x t per block / tokens/s of bare forwards (1.00: no overhead "
                      "over the forwards it needs).", "",
                      "| estimator | t / block | tokens | time (s) | tokens/s | bare forward tokens/s | ratio | nats / token |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['estimator']} | {r['t_per_block']} | {r['tokens']} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | "
                             f"{r['forward_tokens_per_s']:,.0f} | {r['ratio']:.2f} | {r['nats_per_token']:.3f} |")
        lines.append("")
        lines.append(f"Section time: {section['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.parser(__doc__)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip the sections that would start after this many seconds")
    parser.add_argument("--dry-run", action="store_true",
                        help="every section at tiny shapes on CPU (Triton in its interpreter); needs --results away from benchmarks/results")
    args = harness.parse(parser, argv)
    if args.report_only:
        return args
    if args.dry_run and Path(args.results).resolve() == harness.RESULTS.resolve():
        parser.error("--dry-run writes its tiny figures to --results DIR, never over benchmarks/results/gpu.*")
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)
    args.device = "cpu" if args.dry_run else "cuda"
    args.shapes = SHAPES["dry" if args.dry_run else "gpu"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shapes = getattr(args, "shapes", None)
    if shapes is not None:  # stored with the record through the measurement, not as a setting
        del args.shapes
    harness.report(NAME, args, lambda: measure(argparse.Namespace(**vars(args), shapes=shapes)), markdown)


if __name__ == "__main__":
    main()
