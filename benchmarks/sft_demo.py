"""Supervised fine-tuning (SFT) with a checkable answer: exact-match accuracy of a tiny diffusion LM before and after.

The run, in a work directory (default runs/sft_demo), each part kept and reused by a rerun with the same settings:

1. data: ``benchmarks/instruction_tasks.py`` rows (reverse a word, sort digits, copy a key, fill a blank; train and
   held-out test items disjoint), rewritten for SFT: the prompt ends with the separator " =>" and the response starts
   with a space (``sft_row``). The byte-level BPE writes a word's leading space into its first token ("Ġkey"), so an
   answer word is spelled with the same tokens as in the prompt;
2. base: the quickstart recipe (``recipes/quickstart.yaml``: a 128 x 4 absorbing model, byte-level BPE of 1024 tokens
   trained on Python's own documentation), trained here, or ``--base DIR`` (any ddlm model directory);
3. SFT of the base: a recipe with a ``finetune`` section and ``data.format: sft`` (``sft_recipe``), full fine-tuning
   and, with ``--lora``, LoRA adapters of rank 8 instead;
4. exact-match accuracy of each model (base, SFT) on the held-out test prompts, overall and per task: the response
   positions (the block after the prompt) sampled with the prompt clamped, cut at the first EOS, whitespace stripped
   (``answers``), under two decodings; and the held-out bound on -log p(response | prompt) per response token that the
   SFT run evaluates before its first step and after its last (``metrics.jsonl``).

    python benchmarks/sft_demo.py --threads 1           # ~1 h on one CPU thread
    python benchmarks/sft_demo.py --threads 1 --lora    # also LoRA
    python benchmarks/sft_demo.py --quick --work DIR --results DIR   # a smoke run (seconds), for the tests

Writes RESULTS/sft_demo.json and RESULTS/sft_demo.md (``--report-only`` rebuilds the table from the JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # run by path, or loaded by the tests
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import instruction_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEPARATOR = " =>"  # the prompt's end; the response starts with a space
DECODINGS = {  # name -> (predictor, sampler keywords, what it is)
    "sample": ("analytic", {}, "analytic predictor, temperature 1 (the model's own law)"),
    "greedy": ("confidence", {"temperature": 0.0}, "confidence predictor (the most confident positions first), temperature 0"),
}


def sft_row(row: dict) -> dict:
    """An ``instruction_tasks`` row as an SFT row: ``{"prompt": prompt + " =>", "response": " " + response, "task"}``."""
    return {"prompt": row["prompt"] + SEPARATOR, "response": " " + row["response"], "task": row["task"]}


def make_data(folder: Path, n_train: int, n_test: int, seed: int) -> dict:
    """Write folder/train.jsonl and folder/test.jsonl (SFT rows); their row counts per task."""
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [sft_row(row) for row in instruction_tasks.make_examples(n, seed, split)]
        instruction_tasks.write_jsonl(rows, folder / f"{split}.jsonl")
        counts[split] = {task: sum(row["task"] == task for row in rows) for task in instruction_tasks.TASKS}
    return counts


# ----------------------------------------------------------------------------- recipes


def base_overrides(args, work: Path) -> list[str]:
    """``section.key=value`` overrides of the quickstart recipe for the base model."""
    out = [f"train.steps={args.base_steps}", f"train.output_dir={work / 'base'}", f"data.cache_dir={work / 'cache'}",
           "train.trackers=[none]"]
    if args.quick:  # a few pydoc topics, a small tokenizer, 2 steps
        out += [f"data.source={work / 'quick_text'}", "tokenizer.train_vocab_size=300",
                "train.eval_every=2", "train.eval_blocks=2", "train.eval_num_t=2", "train.sample_every=2",
                "train.sample_steps=2", "train.save_every=2", "train.warmup_steps=1", "data.validation_fraction=0.1"]
    return out


def sft_recipe(args, init_from: Path, data: Path, output_dir: Path, lora: bool) -> dict:
    """The SFT recipe (what ``ddlm train RECIPE.yaml`` reads, as a dict)."""
    steps = args.sft_steps
    return {
        "finetune": {"init_from": str(init_from), **({"lora_rank": 8} if lora else {})},
        "data": {"format": "sft", "source": str(data / "train.jsonl"), "validation_split": str(data / "test.jsonl"),
                 "block_size": args.block_size},
        "train": {"steps": steps, "global_batch_size": 32, "micro_batch_size": 32, "lr": args.lora_lr if lora else args.lr,
                  "warmup_steps": min(100, steps), "decay": "cosine", "ema": 0.999,
                  "log_every": 50, "eval_every": max(1, steps // 4), "eval_blocks": args.test, "eval_num_t": args.eval_num_t,
                  "sample_every": steps, "num_samples": 2, "sample_steps": args.steps, "save_every": steps,
                  "trackers": ["none"], "seed": args.seed, "output_dir": str(output_dir)},
    }


def _done(folder: Path, settings: dict) -> dict | None:
    """The stored record of a finished part run with the same settings, else None."""
    stamp = folder / "sft_demo_part.json"
    if (folder / "final").is_dir() and stamp.is_file():
        record = json.loads(stamp.read_text())
        if record["settings"] == settings:
            return record
    return None


def _finish(folder: Path, settings: dict, seconds: float) -> dict:
    record = {"settings": settings, "seconds": seconds}
    (folder / "sft_demo_part.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def train_base(args, work: Path) -> tuple[Path, dict]:
    """(model directory, {"seconds", "reused", "command"}) of the base model: trained from the quickstart recipe
    unless a finished run with the same overrides is there."""
    from ddlm.training.loop import train
    from ddlm.training.recipes import load_recipe

    overrides = base_overrides(args, work)
    command = "ddlm train quickstart " + " ".join(overrides)
    done = _done(work / "base", {"command": command})
    if done:
        return work / "base" / "final", {"seconds": done["seconds"], "reused": True, "command": command}
    if args.quick:
        from pydoc_data.topics import topics

        (work / "quick_text").mkdir(parents=True, exist_ok=True)
        for name in sorted(topics)[:12]:
            (work / "quick_text" / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    start = time.perf_counter()
    final = train(load_recipe("quickstart", overrides), progress=not args.quiet)
    seconds = time.perf_counter() - start
    _finish(work / "base", {"command": command}, seconds)
    return Path(final), {"seconds": seconds, "reused": False, "command": command}


def finetune(args, base: Path, data: Path, work: Path, lora: bool) -> tuple[Path, dict]:
    """(model directory, run facts) of one SFT run: wall time, the recipe and the held-out bound at every evaluation."""
    from ddlm.training.loop import train
    from ddlm.training.recipes import recipe_from_dict

    folder = work / ("sft_lora" if lora else "sft_full")
    recipe = sft_recipe(args, base, data, folder, lora)
    done = _done(folder, {"recipe": recipe})
    if done:
        seconds, reused = done["seconds"], True
    else:
        start = time.perf_counter()
        train(recipe_from_dict(recipe), progress=not args.quiet)
        seconds, reused = time.perf_counter() - start, False
        _finish(folder, {"recipe": recipe}, seconds)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    bounds = [{"step": r["step"], "bound": r["eval/bound_per_token"], "stderr": r["eval/bound_stderr"]}
              for r in records if "eval/bound_per_token" in r]
    return folder / "final", {"seconds": seconds, "reused": reused, "recipe": recipe, "bounds": bounds}


# ----------------------------------------------------------------------------- answers and accuracy


def answers(model_dir: Path, rows: list[dict], block_size: int, steps: int, decoding: str, seed: int,
            batch_size: int = 100) -> list[str]:
    """The generated response to each row's prompt: the prompt's tokens clamped at the start of a block of
    ``block_size`` tokens, the rest of the block sampled in ``steps`` steps under ``decoding`` (``DECODINGS``), cut at
    the first EOS and decoded. Rows go in batches of ``batch_size`` in order, one generator seeded ``seed``."""
    import torch

    from ddlm import DiffusionPipeline
    from ddlm.text.corpora import eos_id

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    eos = eos_id(pipe.tokenizer)
    predictor, options, _ = DECODINGS[decoding]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for first in range(0, len(rows), batch_size):
        blocks, fixed = [], []
        for row in rows[first:first + batch_size]:
            prompt = pipe.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            if len(prompt) >= block_size:
                raise ValueError(f"a prompt of {len(prompt)} tokens leaves no room in a block of {block_size}")
            blocks.append(prompt + [eos] * (block_size - len(prompt)))
            fixed.append([True] * len(prompt) + [False] * (block_size - len(prompt)))
        blocks, fixed = torch.tensor(blocks), torch.tensor(fixed)
        filled = pipe.sample(len(blocks), block_size, steps, predictor, x_init=blocks, fixed=fixed, generator=generator,
                             progress=False, **options)
        for ids, mask in zip(filled, fixed):
            response = ids[int(mask.sum()):]
            ends = (response == eos).nonzero()
            out.append(pipe.decode(response[:int(ends[0])] if len(ends) else response))
    return out


def evaluate(model_dir: Path, rows: list[dict], args) -> dict:
    """Accuracy of one model under each decoding, with a few example answers and the time taken."""
    out = {}
    for decoding in DECODINGS:
        start = time.perf_counter()
        predicted = answers(model_dir, rows, args.block_size, args.steps, decoding, args.seed)
        result = instruction_tasks.accuracy(predicted, [r["response"] for r in rows], [r["task"] for r in rows])
        result["seconds"] = time.perf_counter() - start
        seen, examples = set(), []
        for row, answer in zip(rows, predicted):  # the first row of each task
            if row["task"] not in seen:
                seen.add(row["task"])
                examples.append({"task": row["task"], "prompt": row["prompt"], "reference": row["response"].strip(),
                                 "answer": answer.strip()})
        result["examples"] = examples
        out[decoding] = result
    return out


def measure(args) -> dict:
    """Run every part (reusing finished ones) and return the record's numbers."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    work = Path(args.work)
    data = work / "data"
    counts = make_data(data, args.train, args.test, args.seed)
    test_rows = instruction_tasks.read_jsonl(data / "test.jsonl")
    if args.base:
        base, base_facts = Path(args.base), {"seconds": None, "reused": True, "command": f"--base {args.base}"}
    else:
        base, base_facts = train_base(args, work)
    models = {"base": (base, base_facts)}
    for lora in (False, True) if args.lora else (False,):
        models["sft_lora" if lora else "sft_full"] = finetune(args, base, data, work, lora)
    record = {"data": counts, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
              "commit": commit,
              "command": "python benchmarks/sft_demo.py " + " ".join(sys.argv[1:]), "models": {}}
    for name, (model_dir, facts) in models.items():
        if not args.quiet:
            print(f"[sft_demo] accuracy of {name} ({model_dir})", flush=True)
        record["models"][name] = {**facts, "dir": str(model_dir), "accuracy": evaluate(model_dir, test_rows, args)}
    return record


# ----------------------------------------------------------------------------- the table


def _pct(value: float, n: int) -> str:
    return f"{100 * value:.1f} % ({round(value * n)}/{n})"


def _code_cell(text: str) -> str:
    """A table cell showing ``text`` as code: newlines as \\n, pipes escaped, backticks as quotes; (empty) if empty."""
    if not text:
        return "(empty)"
    return "`" + text.replace("\n", "\\n").replace("|", "\\|").replace("`", "'") + "`"


def markdown(record: dict) -> str:
    s, models = record["settings"], record["models"]
    names = {"base": "base (quickstart)", "sft_full": "SFT, full", "sft_lora": "SFT, LoRA rank 8"}
    tasks = list(instruction_tasks.TASKS)
    lines = ["# Instruction tuning: exact-match accuracy before and after SFT", "",
             f"`{record['command']}` on {record['machine']} (commit {record['commit']}).", "",
             f"Held-out test prompts: {s['test']} (items disjoint from the {s['train']} training rows), "
             f"separator `\"{SEPARATOR}\"` after the prompt, response after a space. Each answer: the prompt clamped at the "
             f"start of a block of {s['block_size']} tokens, the rest of the block (the response and its EOS padding) "
             f"sampled in {s['steps']} steps, cut at the first EOS, compared with the reference after stripping whitespace; "
             f"rows in batches of 100, one generator seeded {s['seed']}.", ""]
    for decoding, (predictor, options, what) in DECODINGS.items():
        lines += [f"## Exact match, decoding `{decoding}`: {what}", "",
                  "| model | overall | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for name, model in models.items():
            acc = model["accuracy"][decoding]
            cells = [_pct(acc["per_task"][t], acc["per_task_n"][t]) for t in tasks]
            lines.append(f"| {names[name]} | **{_pct(acc['overall'], acc['n'])}** | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Held-out bound on -log p(response | prompt)", "",
              f"Nats per response token (EOS padding included) ± one standard error, {s['test']} test examples, "
              f"{s['eval_num_t']} times t each; evaluated by the SFT run before its first step (the base model) and after its last "
              "(EMA weights).", "",
              "| model | before SFT | after SFT | SFT steps | SFT wall time |", "|---|---|---|---|---|"]
    for name, model in models.items():
        if name == "base":
            continue
        first, last = model["bounds"][0], model["bounds"][-1]
        lines.append(f"| {names[name]} | {first['bound']:.3f} ± {first['stderr']:.3f} | {last['bound']:.3f} ± {last['stderr']:.3f} | "
                     f"{model['recipe']['train']['steps']} | {model['seconds'] / 60:.1f} min |")
    for name, model in models.items():
        if name != "base":
            lines.append(f"\n{names[name]}, every evaluation (step: bound): "
                         + ", ".join(f"{b['step']}: {b['bound']:.3f}" for b in model["bounds"]) + ".")
    base = models["base"]
    base_time = "not recorded (--base)" if base["seconds"] is None else f"{base['seconds'] / 60:.1f} min"
    lines += ["", "## Settings and wall times", "",
              f"- base: `{base['command']}` ({base_time})",
              *(f"- {names[name]}: lr {m['recipe']['train']['lr']}, batch 32, cosine decay, EMA "
                f"{m['recipe']['train']['ema']}" for name, m in models.items() if name != "base"),
              f"- accuracy time per model and decoding ({s['test']} prompts): " + ", ".join(
                  f"{name} {decoding} {m['accuracy'][decoding]['seconds']:.0f} s" for name, m in models.items() for decoding in DECODINGS),
              "", "## One answer per task (decoding `sample`)", "",
              "| model | task | prompt | reference | answer |", "|---|---|---|---|---|"]
    for name, model in models.items():
        for ex in model["accuracy"]["sample"]["examples"]:
            cells = [ex["prompt"], ex["reference"], ex["answer"]]
            lines.append(f"| {names[name]} | {ex['task']} | " + " | ".join(_code_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/sft_demo"), help="work directory (default runs/sft_demo)")
    parser.add_argument("--base", default=None, help="a trained ddlm model directory to fine-tune (default: train the quickstart)")
    parser.add_argument("--base-steps", type=int, default=1000, help="quickstart training steps (default 1000, the recipe's)")
    parser.add_argument("--train", type=int, default=4000, help="training rows (default 4000)")
    parser.add_argument("--test", type=int, default=400, help="held-out test rows (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="data, training and decoding seed (default 0)")
    parser.add_argument("--block-size", type=int, default=64, help="tokens per SFT example and per generated block (default 64)")
    parser.add_argument("--sft-steps", type=int, default=3000, help="SFT optimizer steps (default 3000)")
    parser.add_argument("--lr", type=float, default=5e-4, help="full fine-tuning learning rate (default 5e-4)")
    parser.add_argument("--lora", action="store_true", help="also fine-tune LoRA adapters of rank 8 (needs peft)")
    parser.add_argument("--lora-lr", type=float, default=2e-3, help="LoRA learning rate (default 2e-3)")
    parser.add_argument("--steps", type=int, default=64, help="sampling steps per answer (default 64)")
    parser.add_argument("--eval-num-t", type=int, default=16, help="times t per example of the held-out bound (default 16)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny base, a few rows and steps")
    parser.set_defaults(threads=1)
    args = harness.parse(parser, argv)
    if args.quick:
        args.train, args.test, args.base_steps, args.sft_steps = 64, 8, 2, 2
        args.steps, args.eval_num_t, args.block_size = 4, 2, 128
    return harness.report("sft_demo", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
