"""Start-up of the ``ddlm`` command line, as a ratio to ``python -c "import torch"``.

Each case is a fresh interpreter (``python -m ddlm ...``, which runs the same ``ddlm.cli:main`` as
the ``ddlm`` console script), timed from start to exit in wall-clock and CPU (user + system) seconds:

- ``--help``, ``sample --help`` and an argument error (``sample MODEL --top-p 2``, exit 2);
- ``sample MODEL --steps 1 --length 8 --num-samples 1 --no-denoise --quiet``: the whole command with
  an untrained ``tiny`` model (64 x 2, byte-level BPE vocabulary) saved by the code under test into a
  temporary directory. Its model work (one forward of 8 tokens, decoding) is measured on its own in
  this process after loading and reported beside it, so the command's time is its time up to its
  first model call plus that figure. No hook or patch enters the timed process.

The baseline ``python -c "import torch"`` runs in every round, interleaved with the cases; a ratio
is the median over rounds of (case / the same round's baseline), so load from other jobs on the
machine cancels as far as it can. ``--baseline-ref REF`` also times the code of a git commit (the
"before"), checked out in a temporary ``git worktree`` and put first on PYTHONPATH; every
subprocess runs in a temporary directory so that neither checkout is found by accident (the
benchmark checks which one each interpreter imports). Writes benchmarks/results/startup.{md,json}.

    OMP_NUM_THREADS=1 python benchmarks/startup.py [--repeats 7] [--baseline-ref 3563136]
    python benchmarks/startup.py --report-only   # the table again from startup.json
"""

import contextlib
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import harness

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "The cat sat on the mat. The dog sat on the log. A bird sang in the tree by the house. " * 20
SAVE_TINY_MODEL = """
import sys
from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.text.pipeline import DiffusionPipeline
from ddlm.text.tokenization import train_byte_bpe
tokenizer = train_byte_bpe([sys.argv[2]], 300)
config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=8)
DiffusionPipeline(DDLMForDiffusion(config), tokenizer).save_pretrained(sys.argv[1])
"""
SAMPLE_OPTIONS = ["--steps", "1", "--length", "8", "--num-samples", "1", "--no-denoise", "--quiet", "--seed", "0"]


def cases(model: str) -> dict[str, tuple[list[str], int]]:
    """Name -> (arguments after ``python -m ddlm``, expected exit code)."""
    return {"ddlm --help": (["--help"], 0), "ddlm sample --help": (["sample", "--help"], 0),
            "ddlm sample MODEL --top-p 2 (argument error)": (["sample", model, "--top-p", "2"], 2),
            "ddlm sample MODEL (tiny model, 1 step)": (["sample", model, *SAMPLE_OPTIONS], 0)}


def run(argv: list[str], env: dict, cwd: str, code: int = 0) -> tuple[float, float]:
    """(wall, CPU) seconds of one subprocess, which must exit with ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != code:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}, expected {code}:\n{done.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def environment(code_root: pathlib.Path) -> dict:
    """The subprocess environment that imports ddlm from ``code_root``; one thread as everywhere here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(code_root)}
    env.pop("PYTHONSTARTUP", None)
    return env


def prepare(label: str, code_root: pathlib.Path, work: pathlib.Path) -> dict:
    """The version ``label``: its environment, its tiny model, and a check that it imports its own ddlm."""
    env = environment(code_root)
    found = subprocess.run([sys.executable, "-c", "import ddlm; print(ddlm.__file__)"], env=env, cwd=work, capture_output=True,
                           text=True, check=True).stdout.strip()
    if pathlib.Path(found).resolve().parent.parent != code_root.resolve():
        raise SystemExit(f"{label}: ddlm was imported from {found}, not from {code_root}")
    model = work / f"tiny-{label}"
    run(["-c", SAVE_TINY_MODEL, str(model), TEXT], env, str(work))
    return {"env": env, "model": str(model), "root": str(code_root)}


def model_work_seconds(model: str, repeats: int) -> float:
    """Median seconds of the sample command's model work after loading: generate(1, 8, steps=1), decoded."""
    import transformers

    from ddlm.text.pipeline import DiffusionPipeline

    transformers.utils.logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(model)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        pipe.generate(1, 8, steps=1, denoise=False, seed=0, progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(versions: dict[str, dict], repeats: int, work: pathlib.Path) -> tuple[dict, list[dict]]:
    """Interleaved rounds (one warm-up round discarded): the baseline, then every case of every version."""
    base, rows = [], {}
    for round_ in range(repeats + 1):
        wall0, cpu0 = run(["-c", "import torch"], environment(ROOT), str(work))
        base.append((wall0, cpu0))
        for label, version in versions.items():
            for name, (argv, code) in cases(version["model"]).items():
                wall, cpu = run(["-m", "ddlm", *argv], version["env"], str(work), code)
                rows.setdefault((label, name), []).append((wall, cpu, wall / wall0, cpu / cpu0))
        print(f"round {round_}: import torch {wall0:.2f} s wall, {cpu0:.2f} s CPU", flush=True)
    median = lambda values, i: statistics.median(v[i] for v in values[1:])  # noqa: E731
    baseline = {"wall_s": median(base, 0), "cpu_s": median(base, 1)}
    table = [{"command": name, "version": label, "wall_s": median(values, 0), "cpu_s": median(values, 1),
              "wall_ratio": median(values, 2), "cpu_ratio": median(values, 3)} for (label, name), values in rows.items()]
    order = list(cases("MODEL"))
    return baseline, sorted(table, key=lambda row: (order.index(row["command"]), row["version"] != "before"))


def markdown(result: dict) -> str:
    """The markdown table of ``result``."""
    b = result["baseline"]
    lines = [f"# Command-line start-up ({result['machine']})", "",
             f"Command: `{result['command']}`. Each figure is a fresh interpreter from start to exit, the median of "
             f"{result['repeats']} interleaved rounds; a ratio is the median over rounds of the case over the same round's "
             f"baseline `python -c \"import torch\"` ({b['wall_s']:.2f} s wall, {b['cpu_s']:.2f} s CPU here). "
             + (f"before: commit {result['baseline_ref']}; " if result["baseline_ref"] else "") + "after: this checkout. "
             "The sample row is the whole command with an "
             f"untrained tiny model (64 x 2) and the options `{' '.join(SAMPLE_OPTIONS)}`; its model work after loading (one forward and the "
             f"decoding, timed in the benchmark's process) takes {result['model_work_s'] * 1000:.1f} ms.", "",
             "| command | version | wall (s) | CPU (s) | wall / import torch | CPU / import torch |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        command, _, note = row["command"].partition(" (")
        lines.append(f"| `{command}`{f' ({note}' if note else ''} | {row['version']} | {row['wall_s']:.3f} | {row['cpu_s']:.3f} | "
                     f"{row['wall_ratio']:.2f} | {row['cpu_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def worktree(ref: str | None):
    """A temporary ``git worktree`` of ``ref`` (None: nothing), removed afterwards."""
    if ref is None:
        yield None
        return
    path = pathlib.Path(tempfile.mkdtemp(prefix="ddlm-startup-")) / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), ref], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=True)
        path.parent.rmdir()


def run_all(args) -> dict:
    """Time the cases of this checkout (and of --baseline-ref) against the baseline: the startup.json record's numbers."""
    with tempfile.TemporaryDirectory(prefix="ddlm-startup-") as tmp, worktree(args.baseline_ref) as before:
        work = pathlib.Path(tmp)
        versions = {} if before is None else {"before": prepare("before", before, work)}
        versions["after"] = prepare("after", ROOT, work)
        baseline, rows = measure(versions, args.repeats, work)
        model_work = model_work_seconds(versions["after"]["model"], 5)
    command = "OMP_NUM_THREADS=1 python benchmarks/startup.py" + (f" --baseline-ref {args.baseline_ref}" if args.baseline_ref else "") \
        + (f" --repeats {args.repeats}" if args.repeats != 7 else "")
    return {"machine": f"{harness.machine()}, Python {platform.python_version()}", "command": command, "repeats": args.repeats,
            "baseline_ref": args.baseline_ref, "baseline": baseline, "model_work_s": model_work, "rows": rows}


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="measured rounds (after one warm-up round)")
    parser.add_argument("--baseline-ref", default=None, help="a git commit to time as 'before' (default: none)")
    return harness.parse(parser, argv)


def main() -> None:
    args = parse_args()
    harness.report("startup", args, lambda: run_all(args), markdown)


if __name__ == "__main__":
    main()
