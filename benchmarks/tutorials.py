"""Run the commands of the getting-started and tutorial pages exactly as written and publish what they print.

The pages quote no hand-copied output: each includes a results file this script writes. A part runs a page
as a reader would, in a work directory (default runs/tutorials), with none of the test suite's shortcuts:
``ddlm ...`` lines through ``ddlm.cli.main`` and ``python SCRIPT.py ...`` lines in this process, Python
blocks in one namespace, ``<!-- test: file NAME -->`` blocks written to NAME. The printed output (stdout;
progress bars go to stderr) of the commands a part publishes goes to ``benchmarks/results/tutorial_KEY.md``
with the command, its run time and the machine; every command's output goes to tutorials.json. It takes the
harness's arguments (benchmarks/harness.py; --threads defaults to 1, as the pages state) and machine fields
(in its own header, with the commit), but writes its files itself: tutorials.json keeps run times to 0.1 s while the pages'
files show the unrounded time in whole seconds, so --report-only cannot rebuild them and is refused.

    python benchmarks/tutorials.py demo continuous   # ~2 min: `ddlm demo`, examples/continuous_2d.py
    python benchmarks/tutorials.py quickstart        # ~10 min: `ddlm train quickstart`
    python benchmarks/tutorials.py text ar           # ~25 min: both tutorials (ar reuses text's work directory)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests/test_tutorial_results.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Part:
    page: str  # the page whose commands run, relative to the repository root
    publish: dict[str, str]  # command prefix -> result key (benchmarks/results/tutorial_KEY.md)
    whole_page: bool = False  # run every block not marked skip, in order; else only the published commands


PARTS = {
    "demo": Part("docs/getting-started.md", {"ddlm demo": "demo"}),
    "quickstart": Part("docs/getting-started.md", {"ddlm train quickstart": "quickstart"}),
    "text": Part("docs/tutorials/train-your-own-text.md",
                 {"ddlm train my-recipe.yaml": "text_train", "ddlm eval runs/my-model/final": "text_eval"}, whole_page=True),
    "ar": Part("docs/tutorials/evaluate-against-ar.md",
               {"ddlm eval runs/my-ar/final": "ar_compare", "ddlm eval runs/my-model/final": "ar_naive", "ddlm quality": "ar_quality"},
               whole_page=True),
    "continuous": Part("docs/tutorials/continuous-2d.md", {"python examples/continuous_2d.py": "continuous"}),
}
NEEDS = {"ar": "text"}  # a part that reads what another part wrote into the work directory


def page_steps(page: Path) -> list[tuple[str, str, set[str]]]:
    """(language, code, directives) of each fenced block of a page, with the ``<!-- test: KIND ... -->``
    directive kinds (``file NAME`` kept whole) on the lines just before it."""
    steps, pending, lines, i = [], set(), page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        directive, fence = re.match(r"^<!-- test: (.*?)\s*-->$", lines[i].strip()), re.match(r"^```(\w*)\s*$", lines[i])
        if directive:
            pending.add(directive.group(1) if directive.group(1).startswith("file ") else directive.group(1).split()[0])
        elif fence:
            end = lines.index("```", i + 1)
            steps.append((fence.group(1), "\n".join(lines[i + 1:end]) + "\n", pending))
            pending, i = set(), end
        elif lines[i].strip():
            pending = set()
        i += 1
    return steps


def commands(part: Part) -> list[tuple[str, str]]:
    """(kind, text) to run in order: ("file", "NAME\\ncontent"), ("python", code) or ("shell", one command line)."""
    out = []
    for language, code, directives in page_steps(ROOT / part.page):
        files = [d[len("file "):] for d in directives if d.startswith("file ")]
        if part.whole_page and "skip" not in directives and files:
            out.append(("file", f"{files[0]}\n{code}"))
        elif part.whole_page and "skip" not in directives and language == "python":
            out.append(("python", code))
        elif language == "bash":
            for line in code.replace("\\\n", " ").splitlines():
                line = line.strip()
                wanted = any(line.startswith(prefix) for prefix in part.publish)
                if line and not line.startswith("#") and (wanted or (part.whole_page and "skip" not in directives)):
                    out.append(("shell", line))
    return out


class Tee(io.TextIOBase):
    """Writes to the console and keeps a copy."""

    def __init__(self, console):
        self.console, self.copy = console, io.StringIO()  # console None: keep the copy only (--quiet)

    def write(self, text: str) -> int:
        if self.console is not None:
            self.console.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        if self.console is not None:
            self.console.flush()


def run_command(kind: str, text: str, namespace: dict, quiet: bool = False) -> str:
    """Run one command in the current directory; its stdout (also printed unless ``quiet``)."""
    from ddlm.cli import main

    tee = Tee(None if quiet else sys.stdout)
    with contextlib.redirect_stdout(tee):
        if kind == "file":
            name, _, content = text.partition("\n")
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_text(content, encoding="utf-8")
        elif kind == "python":
            exec(compile(text, "<page>", "exec"), namespace)
        else:
            words = shlex.split(text, comments=True)
            if words[0] == "ddlm":
                main(words[1:])
            elif words[0] == "python" and words[1].endswith(".py"):
                saved, sys.argv = sys.argv, words[1:]
                try:
                    runpy.run_path(words[1], run_name="__main__")
                finally:
                    sys.argv = saved
            else:
                raise SystemExit(f"no runner for `{text}`")
    return tee.copy.getvalue()


def machine(threads: int) -> str:
    """The harness's machine fields in this script's own words, and the commit."""
    m = harness.machine_fields()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{m['cpu']} ({m['cores']} cores), {threads} torch thread(s), torch {m['torch']}, commit {commit or 'unknown'}"


def result_markdown(name: str, command: str, stdout: str, seconds: float, where: str) -> str:
    """A results file: what ran, where and how long, then its output as the reader sees it."""
    return (f"`{command}` ({seconds:.0f} s; `python benchmarks/tutorials.py {name}` on {where}) printed:\n\n"
            f"```text\n{stdout.strip(chr(10)).rstrip()}\n```\n")


def run_part(name: str, work: Path, results: Path, threads: int, quiet: bool = False) -> list[dict]:
    """Run a part in ``work``, write its published results into ``results``; every command's record."""
    part, namespace, records = PARTS[name], {"__name__": "__tutorial__"}, []
    where = machine(threads)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "examples").exists():
        (work / "examples").symlink_to(ROOT / "examples")  # pages run the examples as python examples/NAME.py
    previous = Path.cwd()
    os.chdir(work)
    try:
        for kind, text in commands(part):
            start = time.perf_counter()
            stdout = run_command(kind, text, namespace, quiet)
            seconds = time.perf_counter() - start
            records.append({"command": text if kind != "file" else f"(write {text.partition(chr(10))[0]})",
                            "seconds": round(seconds, 1), "stdout": stdout})
            key = next((key for prefix, key in part.publish.items() if kind == "shell" and text.startswith(prefix)), None)
            if key is not None:
                (results / f"tutorial_{key}.md").write_text(result_markdown(name, text, stdout, seconds, where), encoding="utf-8")
    finally:
        os.chdir(previous)
    return records


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("parts", nargs="+", choices=list(PARTS))
    parser.add_argument("--work", type=Path, default=Path("runs/tutorials"), help="work directory (default runs/tutorials)")
    parser.set_defaults(threads=1)  # torch threads: 1, as the pages state
    if "--report-only" in sys.argv[1:]:  # refused before the parts are asked for
        parser.error("--report-only: tutorials.json keeps run times to 0.1 s, so the pages' files cannot be rebuilt from it")
    args = harness.parse(parser)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for name in args.parts:
        if name in NEEDS and NEEDS[name] not in args.parts and not (args.work / "runs" / "my-model" / "final").is_dir():
            parser.error(f"part {name} needs part {NEEDS[name]}'s work directory: run `{NEEDS[name]} {name}` together")
    store = results / "tutorials.json"
    for name in args.parts:
        entry = {"machine": machine(args.threads), "commands": run_part(name, args.work.resolve(), results, args.threads, args.quiet)}
        recorded = json.loads(store.read_text()) if store.exists() else {}  # read now: another run may have written a part
        store.write_text(json.dumps({**recorded, name: entry}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
