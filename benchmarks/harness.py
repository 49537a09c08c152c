"""What the benchmark scripts share: their arguments, the machine header and the report.

A script builds its parser with ``parser(__doc__)``, parses with ``parse`` and hands ``report`` its
measurement and its table: ``report`` writes RESULTS/NAME.json (the machine, the settings and the
raw numbers) and RESULTS/NAME.md (the table made from that JSON alone), and with ``--report-only``
rebuilds the table (and plots) from the stored JSON without measuring. torch is imported only when
needed (--threads, the machine header after measuring), so a script can time what loading it costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by a script's docstring, with --threads, --quiet, --report-only and --results."""
    out = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = out.add_argument_group("common to the benchmarks (benchmarks/harness.py)")
    common.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    common.add_argument("--quiet", action="store_true", help="print neither progress nor the table")
    common.add_argument("--report-only", action="store_true", help="rebuild the table (and plots) from the stored JSON; measure nothing")
    common.add_argument("--results", type=Path, default=RESULTS, help=f"folder of NAME.json and NAME.md (default: {RESULTS})")
    return out


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and apply --threads."""
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine_fields(device: str | None = None) -> dict:
    """cpu, cores, threads, torch and gpu (the CUDA device's name when ``device`` is one, else None)."""
    import torch

    cuda = device is not None and device.startswith("cuda")
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else None}


def machine(device: str | None = None) -> str:
    """The machine header of a report: GPU (if any), CPU and cores, torch threads, torch version."""
    m = machine_fields(device)
    gpu = f"{m['gpu']}, " if m["gpu"] else ""
    return f"{gpu}{m['cpu']} ({m['cores']} cores), {m['threads']} torch threads, torch {m['torch']}"


def settings(args: argparse.Namespace) -> dict:
    """The parsed arguments as JSON values (paths as strings)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def recorded(record: dict) -> argparse.Namespace:
    """The settings a record was measured with, as an argparse namespace."""
    return argparse.Namespace(**record["settings"])


def report(name: str, args: argparse.Namespace, measure: Callable[[], dict], markdown: Callable[[dict], str],
           plots: Callable[[dict, Path], None] | None = None) -> dict:
    """Measure (or, with --report-only, read args.results/NAME.json), write NAME.md and the plots; return the record.

    A measured record is ``{"machine", "settings", **measure()}`` (the header taken after measuring; a "machine"
    from ``measure`` replaces it), written to NAME.json and read back from it for the table and plots, so they see
    what --report-only sees (string keys, lists for tuples)."""
    out = Path(args.results)
    path = out / f"{name}.json"
    if args.report_only:
        if not path.is_file():
            print(f"error: --report-only: no {path} (measure first, or pass --results with the folder that holds it)", file=sys.stderr)
            sys.exit(2)
        record = json.loads(path.read_text(encoding="utf-8"))
    else:
        numbers = measure()
        record = {"machine": machine(getattr(args, "device", None)), "settings": settings(args), **numbers}
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        record = json.loads(path.read_text(encoding="utf-8"))  # the table is made from what is stored
    text = markdown(record)
    (out / f"{name}.md").write_text(text, encoding="utf-8")
    if plots:
        plots(record, out)
    if not args.quiet:
        print(text)
    return record
