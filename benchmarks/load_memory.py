"""Peak host memory per parameter when ddlm loads an open-weight model in bfloat16.

Writes random checkpoints in bfloat16 (the values do not change what loading costs):

- LLaDA's published layout (config.json with LLaDA's field names, safetensors under its tensor names),
  one ``model.safetensors`` and the same tensors in shards with ``model.safetensors.index.json``, at
  two sizes: ``tiny`` (d_model 128, 2 blocks, 4096 rows: ~1.5M parameters) and ``medium`` (d_model
  1024, 12 blocks, 32000 rows: ~220M parameters, ~440 MB);
- for comparison a transformers masked LM, ``BertForMaskedLM(BertConfig())`` (BERT-base, ~110M
  parameters) saved with ``save_pretrained`` in bfloat16 and read by ``ddlm.models.masked_lm.load_masked_lm``.

Each load runs in a fresh Python process (``--child``, one torch thread) that imports torch,
transformers, safetensors, ddlm and the model code the loader uses, takes its memory as the baseline
(cold), or first loads, reads and drops a ~3K-parameter checkpoint of the same family and then takes
it (warm: the first load's one-off costs, lazily imported code and its pages, allocator arenas, out
of the baseline); resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``); loads
with ``load_llada(dtype=torch.bfloat16)`` (or ``load_masked_lm(..., dtype=torch.bfloat16)``); then
reads one element of every page of every weight, as a first forward pass would. Memory comes from
/proc/self/status and /proc/self/smaps, as bytes per parameter of the loaded model (2 = the bf16
weights themselves):

- peak RSS (the target's measure): VmHWM - VmRSS at the baseline, over the load and the reads.
  RSS counts anonymous memory and resident pages of mapped files. A bf16 tensor that safetensors
  reads onto the CPU in bf16 is a view of its memory map of the checkpoint (no copy), so the
  weights are file pages: shared with the page cache, clean, and not resident until read;
- load only: the same just after the loader returns, before the reads (the pages it touched);
- peak anon: the largest RssAnon (heap, tensors the process owns), sampled every millisecond by a
  thread, minus its baseline: a float32 or other copy of the weights would show here;
- checkpoint pages: the resident bytes of the mappings of the checkpoint's files after the reads.

Layout "float32" stores the same values in float32 (one file) and casts them while loading: not the
target's case, but what a bf16 load of a float32 checkpoint costs. The loader reads such tensors with
plain file reads, ``ddlm.models.open_weights.CHUNK`` (8 MiB) at a time, into the bf16 weights (anonymous
memory), so no page of the checkpoint is mapped: the weights plus one chunk. Target: peak RSS <= 2.2 bytes per
parameter for the bf16 checkpoints (the issue's "bytes of peak memory per parameter when loading an
LLaDA-shaped model in bf16").

    OMP_NUM_THREADS=1 python benchmarks/load_memory.py [--models llada-tiny:single llada-medium:sharded ...] [--repeats 3]
    python benchmarks/load_memory.py --report-only   # the table again from benchmarks/results/load_memory.json
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness

LLADA_FIELDS = {  # LLaDA-8B-Instruct's config.json, sizes replaced per model below
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "embedding_dropout": 0.0,
    "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_device": "meta", "init_fn": "mitchell",
    "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
    "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "bfloat16", "use_cache": False, "weight_tying": False,
}
LLADA_SIZES = {  # d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size, embedding_size (= vocab_size), mask id
    "llada-tiny": dict(d_model=128, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=352, embedding_size=4096,
                       vocab_size=4096, mask_token_id=4000, max_sequence_length=256),
    "llada-medium": dict(d_model=1024, n_heads=16, n_kv_heads=16, n_layers=12, mlp_hidden_size=2816, embedding_size=32000,
                         vocab_size=32000, mask_token_id=31999, max_sequence_length=4096),
}
LLADA_WARMUP = dict(d_model=16, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=32, embedding_size=64, vocab_size=64,
                    mask_token_id=63, max_sequence_length=32)  # loaded first by a warm child: the loader's code paths, ~3K parameters
BERT_WARMUP = dict(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
MODELS = [*(f"{name}:{layout}" for name in LLADA_SIZES for layout in ("single", "sharded", "float32")), "bert-base"]
SHARDS = 3  # the sharded layout splits the tensors into this many files of about equal size


def llada_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """LLaDA's safetensors names -> shapes for a config.json dict (untied head)."""
    d, heads, kv, hidden = config["d_model"], config["n_heads"], config["n_kv_heads"], config["mlp_hidden_size"]
    kv_width = d // heads * kv
    shapes = {"model.transformer.wte.weight": (config["embedding_size"], d), "model.transformer.ln_f.weight": (d,)}
    block = {"attn_norm": (d,), "q_proj": (d, d), "k_proj": (kv_width, d), "v_proj": (kv_width, d), "attn_out": (d, d),
             "ff_norm": (d,), "ff_proj": (hidden, d), "up_proj": (hidden, d), "ff_out": (d, hidden)}
    for index in range(config["n_layers"]):
        shapes.update({f"model.transformer.blocks.{index}.{name}.weight": shape for name, shape in block.items()})
    shapes["model.transformer.ff_out.weight"] = (config["embedding_size"], d)
    return shapes


def random_bf16(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    """Random bfloat16 tensors of the given shapes (norm weights near 1, matrices ~ N(0, 1 / fan_in))."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        scale = 0.1 if len(shape) == 1 else 1 / math.sqrt(shape[-1])
        value = torch.randn(shape, generator=gen).mul_(scale)
        out[name] = (value.add_(1) if len(shape) == 1 else value).to(torch.bfloat16)
    return out


def write_llada(directory: Path, size: str, layout: str) -> int:
    """A LLaDA directory in bfloat16 (layout "single": one file; "sharded": SHARDS shards with an index) or, layout
    "float32", the same values in float32 in one file; returns its parameter count."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {**LLADA_FIELDS, **(LLADA_WARMUP if size == "warmup" else LLADA_SIZES[size])}
    (directory / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    weights = random_bf16(llada_shapes(config))
    if layout == "float32":  # the same tensors stored in float32, for the cost of a cast while loading
        weights = {name: tensor.float() for name, tensor in weights.items()}
        config["torch_dtype"] = "float32"
    if layout in ("single", "float32"):
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        total = sum(t.numel() * t.element_size() for t in weights.values())
        parts, size_so_far = [[] for _ in range(SHARDS)], 0
        for name, tensor in weights.items():  # in file order, cut at equal byte counts
            parts[min(SHARDS - 1, size_so_far * SHARDS // total)].append(name)
            size_so_far += tensor.numel() * tensor.element_size()
        files = {f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors": names for i, names in enumerate(parts) if names}
        for file, names in files.items():
            save_file({name: weights[name] for name in names}, str(directory / file), metadata={"format": "pt"})
        index = {"metadata": {"total_size": total}, "weight_map": {name: file for file, names in files.items() for name in names}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    return sum(t.numel() for t in weights.values())


def bert_tokenizer():
    """A BertTokenizer over 30522 entries with bert-base-uncased's special ids (as in sampler_overhead.py)."""
    from transformers import BertTokenizer

    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    return BertTokenizer(vocab={specials.get(i, f"w{i}"): i for i in range(30522)}, mask_token="[MASK]")


def write_bert(directory: Path, **config) -> int:
    """BertForMaskedLM(BertConfig(**config)) (random init; default BERT-base) saved in bfloat16 with its tokenizer;
    returns its parameter count."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**config)).to(torch.bfloat16)
    model.save_pretrained(directory)
    bert_tokenizer().save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def write(directory: Path, model: str) -> int:
    """Write ``model`` ("llada-tiny:single", ..., "bert-base", or "llada-warmup" / "bert-warmup") under directory;
    its parameter count."""
    if model.startswith("bert"):
        return write_bert(directory, **(BERT_WARMUP if model == "bert-warmup" else {}))
    if model == "llada-warmup":
        return write_llada(directory, "warmup", "single")
    size, layout = model.split(":")
    return write_llada(directory, size, layout)


# --- the measuring child ---------------------------------------------------------------------------------------------

def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of this process in bytes."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def mapped_rss(directory: str) -> int:
    """Resident bytes of this process's mappings of files under ``directory`` (/proc/self/smaps)."""
    prefix, total, inside = os.path.realpath(directory) + os.sep, 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # a mapping's header: address perms offset dev inode [path]
                fields = line.split(None, 5)
                inside = len(fields) == 6 and fields[5].strip().startswith(prefix)
            elif first == "Rss:" and inside:
                total += int(line.split()[1]) * 1024
    return total


class AnonPeak:
    """A thread reading /proc/self/status every ``interval`` seconds, keeping the largest RssAnon and VmRSS seen."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.anon, self.rss, self.samples = interval, 0, 0, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.is_set():
            now = status()
            self.anon, self.rss, self.samples = max(self.anon, now["RssAnon"]), max(self.rss, now["VmRSS"]), self.samples + 1
            time.sleep(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        now = status()
        self.anon, self.rss = max(self.anon, now["RssAnon"]), max(self.rss, now["VmRSS"])


def touch(params) -> None:
    """Read one element of every page of every tensor (the page faults of a first forward pass)."""
    import torch

    with torch.no_grad():
        for p in params:
            p.detach().reshape(-1)[::max(1, 4096 // p.element_size())].float().sum()


def child(path: str, model: str, warmup: str | None = None) -> dict:
    """Load ``model`` from ``path`` in bfloat16 and report memory (bytes) against the baseline taken after the imports
    and, with ``warmup`` (a directory of the same family's tiny checkpoint), after loading and dropping that first."""
    import gc

    import safetensors.torch  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers import BertForMaskedLM  # noqa: F401  (the code each loader builds from, imported before the baseline)
    from transformers.models.llama import modeling_llama  # noqa: F401

    import ddlm  # noqa: F401
    from ddlm.models.llada import load_llada
    from ddlm.models.masked_lm import load_masked_lm

    tokenizer = bert_tokenizer() if model == "bert-base" else None
    torch.set_num_threads(1)
    if warmup:  # the first load's one-off costs (lazy imports, code pages, allocator arenas) out of the baseline
        first = load_masked_lm(warmup, tokenizer, dtype=torch.bfloat16) if model == "bert-base" else load_llada(warmup, dtype=torch.bfloat16)
        touch(list(first.parameters()))
        del first
    gc.collect()
    before = status()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = status()["VmHWM"] <= before["VmRSS"] + (1 << 20)
    except OSError:
        reset = False
    start = time.perf_counter()
    with AnonPeak() as peak:
        if model == "bert-base":
            loaded = load_masked_lm(path, tokenizer, dtype=torch.bfloat16)
        else:
            loaded = load_llada(path, dtype=torch.bfloat16)
    seconds = time.perf_counter() - start
    after = status()
    checkpoint = mapped_rss(path)
    params = list(loaded.parameters())
    with AnonPeak() as touched_peak:
        touch(params)
    touched = status()
    touched_checkpoint = mapped_rss(path)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    return {"params": sum(p.numel() for p in params), "dtypes": dtypes, "seconds": seconds, "hwm_reset": reset,
            "samples": peak.samples, "baseline": before,
            "peak_rss": (after["VmHWM"] if reset else max(after["VmHWM"], peak.rss)) - before["VmRSS"],
            "peak_anon": peak.anon - before["RssAnon"], "after_anon": after["RssAnon"] - before["RssAnon"],
            "after_file": after["RssFile"] - before["RssFile"], "after_rss": after["VmRSS"] - before["VmRSS"],
            "after_checkpoint": checkpoint, "warm": bool(warmup),
            "touched_rss": (touched["VmHWM"] if reset else max(touched["VmHWM"], peak.rss, touched_peak.rss)) - before["VmRSS"],
            "touched_anon": max(peak.anon, touched_peak.anon) - before["RssAnon"], "touched_checkpoint": touched_checkpoint}


def run_child(path: Path, model: str, warmup: Path | None) -> dict:
    """One load in a fresh interpreter (one torch thread); its report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--child", str(path), model, *([str(warmup)] if warmup else [])]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"loading {model} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the benchmark -------------------------------------------------------------------------------------------------

PER_PARAM = ("peak_rss", "peak_anon", "after_anon", "after_file", "after_checkpoint", "touched_rss", "touched_anon",
             "touched_checkpoint")


def measure(args) -> dict:
    """For each model: write it, load it ``repeats`` times cold and warm (interleaved across models and modes);
    medians of bytes per parameter."""
    with tempfile.TemporaryDirectory(prefix="ddlm-load-memory-", dir=args.workdir) as work:
        paths, written = {}, {}
        for model in args.models:
            paths[model] = Path(work) / model.replace(":", "-")
            written[model] = write(paths[model], model)
            if not args.quiet:
                print(f"wrote {model}: {written[model]:,} parameters", flush=True)
        warmups = {}
        for family in sorted({"bert" if model == "bert-base" else "llada" for model in args.models}):
            warmups[family] = Path(work) / f"{family}-warmup"
            write(warmups[family], f"{family}-warmup")
        files = {model: sum(f.stat().st_size for f in paths[model].glob("*.safetensors")) for model in args.models}
        runs = {(model, mode): [] for model in args.models for mode in ("cold", "warm")}
        for _ in range(args.repeats):
            for model in args.models:
                for mode in ("cold", "warm"):
                    warmup = warmups["bert" if model == "bert-base" else "llada"] if mode == "warm" else None
                    r = run_child(paths[model], model, warmup)
                    runs[model, mode].append(r)
                    if not args.quiet:
                        print(model, mode, {k: round(r[k] / r["params"], 3) for k in PER_PARAM}, f"{r['seconds']:.2f}s", flush=True)
    rows = []
    for model in args.models:
        first = runs[model, "cold"][0]
        params = first["params"]
        row = {"model": model, "params": params, "written_params": written[model], "file_bytes": files[model],
               "dtypes": first["dtypes"], "hwm_reset": all(r["hwm_reset"] for mode in ("cold", "warm") for r in runs[model, mode])}
        for mode in ("cold", "warm"):
            loads = runs[model, mode]
            row[mode] = {"seconds": statistics.median(r["seconds"] for r in loads),
                         **{key: statistics.median(r[key] / params for r in loads) for key in PER_PARAM}, "loads": loads}
        rows.append(row)
    return {"rows": rows}


def markdown(record: dict) -> str:
    """load_memory.md from a load_memory.json record."""
    args = harness.recorded(record)
    lines = [
        "# Host memory per parameter when loading in bfloat16",
        "",
        f"Machine: {record['machine']}. Command: `OMP_NUM_THREADS=1 python benchmarks/load_memory.py --models "
        f"{' '.join(args.models)} --repeats {args.repeats}`. Random checkpoints written in bfloat16; each load in a fresh "
        "process (one torch thread), measured from /proc/self/status and smaps against that process after importing torch, "
        "transformers, safetensors, ddlm and the model code (cold), or after also loading, reading and dropping a "
        "~3K-parameter checkpoint of the same family (warm: one-off costs of a first load out of the baseline). Bytes per "
        "parameter of the loaded model (2 = the bf16 weights themselves), medians over the repeats. Peak RSS: VmHWM (reset "
        "before loading) - VmRSS before, over the load and a read of every page of every weight (as a first forward pass "
        "reads them); load only: the same when the loader returns, before those reads (bf16 weights stay views of "
        "safetensors' memory map of the checkpoint, file pages resident once read). Peak anon: the largest RssAnon sampled "
        "every millisecond - before (a copy of the weights would show here). Checkpoint pages: the resident bytes of the "
        "checkpoint's mappings after the reads. Layout float32: the same values stored in float32 in one file and cast "
        "to bfloat16 while loading, read with plain file reads 8 MiB at a time into the bfloat16 weights (no checkpoint "
        "pages mapped; not the target's case). Target: peak RSS <= 2.2 bytes per parameter for the bfloat16 checkpoints.",
        "",
        "| model | layout | parameters | file (MB) | dtypes | load (s) | peak RSS cold | peak RSS warm | warm / 2 B | load only, warm | peak anon, warm | checkpoint pages |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        name, _, layout = r["model"].partition(":")
        cold, warm = r["cold"], r["warm"]
        lines.append(f"| {name} | {layout or 'save_pretrained'} | {r['params']:,} | {r['file_bytes'] / 1e6:.1f} | "
                     f"{' '.join(r['dtypes'])} | {warm['seconds']:.2f} | {cold['touched_rss']:.3f} | {warm['touched_rss']:.3f} | "
                     f"{warm['touched_rss'] / 2:.3f}x | {warm['peak_rss']:.3f} | {warm['touched_anon']:.3f} | "
                     f"{warm['touched_checkpoint']:.3f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS,
                        help="checkpoints to write and load (LLaDA size:layout, or bert-base)")
    parser.add_argument("--repeats", type=int, default=3, help="loads of each checkpoint, each in a fresh process")
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (default: the system's temp folder)")
    parser.set_defaults(threads=1)
    return harness.parse(parser, argv)


def main():
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--child":  # one measurement (run_child)
        print(json.dumps(child(*sys.argv[2:])))
        return
    args = parse_args()
    harness.report("load_memory", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
