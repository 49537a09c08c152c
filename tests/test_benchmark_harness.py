"""The shared benchmark harness (benchmarks/harness.py) and the scripts that use it: machine header,
JSON -> Markdown round trip with --report-only, each script's --help, and each stored table rebuilt
byte for byte from its stored JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import harness  # noqa: E402

SCRIPTS = ["quality", "sampling", "guidance", "guidance_oracle", "continuous_inpainting", "t_sampling", "zero_shot",
           "eval_cost", "startup", "bound_variance", "sampler_overhead", "fused_loss", "load_memory", "finetune_cost",
           "sft_demo", "adapt"]  # the scripts on the harness
UNMEASURED = ["gpu_suite"]  # on the harness, no stored results yet (a GPU run writes them)
OWN_WRITING = ["train_throughput", "tutorials"]  # the harness's parser and machine header, but their own Markdown
UNSTORED = {"bound_variance"}  # measured before the harness: a table and no JSON yet
NAMES = {"sampler_overhead": ["sampler_overhead_cpu"], "fused_loss": ["kernels_cpu", "kernels_head_cpu"],
         "finetune_cost": ["finetune_cost_cpu"]}  # results named otherwise than their script
TABLES = [("quality", "quality", "markdown"), ("quality", "quality_long", "long_markdown"),
          ("sampler_overhead", "sampler_overhead_bert_cpu", "bert_markdown")] + [
    (script, name, "markdown") for script in SCRIPTS[1:] if script not in UNSTORED
    for name in NAMES.get(script, [script])]  # (script, results name, markdown function)


def test_machine_header_fields():
    fields = harness.machine_fields()
    assert set(fields) == {"cpu", "cores", "threads", "torch", "gpu"}
    assert fields["cpu"] and fields["cores"] >= 1 and fields["gpu"] is None
    assert fields["threads"] == torch.get_num_threads() and fields["torch"] == torch.__version__
    header = harness.machine()
    assert f"{fields['threads']} torch threads" in header and f"torch {torch.__version__}" in header


def args_for(tmp_path: Path, *extra: str):
    parser = harness.parser("A toy benchmark.")
    parser.add_argument("--size", type=int, default=3)
    return harness.parse(parser, ["--results", str(tmp_path), "--quiet", *extra])


def table(record: dict) -> str:
    return f"size {record['settings']['size']} on {record['machine']}: {record['rows']['1']}\n"


def test_report_round_trip(tmp_path):
    plotted = []
    record = harness.report("toy", args_for(tmp_path, "--size", "5"), lambda: {"rows": {1: (2.5, 3)}}, table,
                            lambda r, out: plotted.append((r["rows"], out)))
    stored = (tmp_path / "toy.json").read_text()
    assert json.loads(stored) == record and record["rows"] == {"1": [2.5, 3]} and record["settings"]["size"] == 5
    assert record["machine"] == harness.machine()
    text = (tmp_path / "toy.md").read_text()
    assert text == table(record) and plotted == [({"1": [2.5, 3]}, tmp_path)]
    (tmp_path / "toy.md").unlink()

    def no_measuring():
        raise AssertionError("--report-only measured")

    harness.report("toy", args_for(tmp_path, "--report-only"), no_measuring, table)
    assert (tmp_path / "toy.md").read_text() == text and (tmp_path / "toy.json").read_text() == stored


def test_threads_option_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        assert args_for(tmp_path, "--threads", "1").threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("script", SCRIPTS + OWN_WRITING + UNMEASURED)
def test_help(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--report-only" in result.stdout and "--threads" in result.stdout


@pytest.mark.parametrize("script, name, function", TABLES)
def test_stored_table_rebuilt_from_json(script, name, function):
    module = __import__(script)
    record = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text(encoding="utf-8"))
    assert getattr(module, function)(record) == (BENCHMARKS / "results" / f"{name}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("script, name, options", [
    ("sampler_overhead", "sampler_overhead_cpu", []), ("fused_loss", "kernels_cpu", ["--device", "cpu"]),
    ("fused_loss", "kernels_head_cpu", ["--device", "cpu", "--hidden", "768"])])
def test_report_only_rebuilds_stored_table(tmp_path, script, name, options):
    """--report-only of a script converted to the harness writes the committed table from the committed JSON."""
    stored = BENCHMARKS / "results" / name
    (tmp_path / f"{name}.json").write_bytes(stored.with_suffix(".json").read_bytes())
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--report-only", "--quiet", "--results",
                             str(tmp_path), *options], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"{name}.md").read_bytes() == stored.with_suffix(".md").read_bytes()


@pytest.mark.parametrize("script", OWN_WRITING)
def test_report_only_refused_without_json(script, tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--report-only", "--results", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "error: --report-only:" in result.stderr and not list(tmp_path.iterdir())


def test_report_only_without_its_json_is_one_line_and_status_2(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / "fused_loss.py"), "--report-only", "--device", "cpu", "--results",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --report-only: no {tmp_path / 'kernels_cpu.json'} (measure first, or pass --results with the folder that holds it)"]
    assert not list(tmp_path.iterdir())
