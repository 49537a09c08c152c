"""benchmarks/gpu_suite.py on CPU: the --dry-run of every section at tiny shapes (Triton in its interpreter), the
Markdown rebuilt from the JSON by --report-only, the refusal without a GPU, the budget guard, a failing section
recorded while the others run, and the table of device peaks."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_suite.py"
sys.path.insert(0, str(BENCHMARKS))
import gpu_suite  # noqa: E402

TRITON = importlib.util.find_spec("triton") is not None
TITLES = {name: f"## {name}: {title}" for name, (title, _) in gpu_suite.SECTIONS.items()}


def run(*options: str, cuda: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU seen, on any machine
    return subprocess.run([sys.executable, str(SCRIPT), *options], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("gpu")
    result = run("--dry-run", "--quiet", "--results", str(results))
    assert result.returncode == 0, result.stderr[-3000:]
    return results


def test_dry_run_measures_every_section(dry_run):
    record = json.loads((dry_run / "gpu.json").read_text(encoding="utf-8"))
    assert list(record["sections"]) == list(gpu_suite.SECTIONS)
    assert record["versions"]["device"] == "cpu" and record["settings"]["dry_run"] is True
    for name, section in record["sections"].items():
        assert "error" not in section and "skipped" not in section, (name, section)
        assert section["rows"], name
        for row in section["rows"]:
            assert "error" not in row, (name, row)
            if "skipped" in row:  # only the Triton candidates, and only without triton
                assert not TRITON and "triton" in row["candidate"], (name, row)
    loss = record["sections"]["loss"]["rows"]
    candidates = {row["candidate"] for row in loss}
    assert {"sedd_eager", "sedd_compiled", "ddlm_torch", "ddlm_triton", "ddlm_triton_inplace"} <= candidates
    assert {row["dtype"] for row in loss} == {"float32", "bfloat16"}
    if TRITON:
        assert all("time" in row for row in loss) and record["versions"]["triton_interpret"]
    assert {row["candidate"] for row in record["sections"]["train"]["rows"]} == {
        "gpt2", "gpt2_compiled", "ddlm_diffusion", "ddlm_diffusion_compiled", "ddlm_ar"}
    assert {(row["process"], row["predictor"]) for row in record["sections"]["sampling"]["rows"]} == {
        ("absorbing", "analytic"), ("absorbing", "first_hitting"), ("uniform", "analytic"), ("absorbing", "analytic (generate)")}
    assert {row["estimator"] for row in record["sections"]["eval"]["rows"]} == {"dataset", "per-text"}
    text = (dry_run / "gpu.md").read_text(encoding="utf-8")
    assert text.startswith("# GPU suite (dry run: tiny shapes on CPU)\n")
    for heading in TITLES.values():
        assert f"\n{heading}\n" in text


def test_report_only_rebuilds_the_table_from_json(dry_run, tmp_path):
    stored = (dry_run / "gpu.json").read_bytes()
    (tmp_path / "gpu.json").write_bytes(stored)
    result = run("--report-only", "--quiet", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gpu.md").read_bytes() == (dry_run / "gpu.md").read_bytes()
    assert (tmp_path / "gpu.json").read_bytes() == stored


def test_refuses_without_a_gpu(tmp_path):
    result = run("--results", str(tmp_path), cuda=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [gpu_suite.NO_CUDA]
    assert not list(tmp_path.iterdir())


def test_dry_run_never_writes_over_the_stored_results():
    result = run("--dry-run", "--sections", "eval")
    assert result.returncode == 2 and "--results DIR" in result.stderr


def test_budget_skips_the_remaining_sections(tmp_path):
    result = run("--dry-run", "--quiet", "--budget-s", "0", "--sections", "eval", "loss", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr
    sections = json.loads((tmp_path / "gpu.json").read_text(encoding="utf-8"))["sections"]
    assert list(sections) == ["eval", "loss"] and all("--budget-s 0 spent" in s["skipped"] for s in sections.values())
    text = (tmp_path / "gpu.md").read_text(encoding="utf-8")
    assert text.count("Skipped: --budget-s 0 spent") == 2 and TITLES["loss"] in text


def test_a_failing_section_is_recorded_and_the_next_runs(monkeypatch):
    def broken(args, device, say):
        raise RuntimeError("boom")

    def working(args, device, say):
        return {"rows": [{"device": device.type}]}

    monkeypatch.setattr(gpu_suite, "SECTIONS", {"loss": ("t", broken), "eval": ("t", working)})
    args = argparse.Namespace(device="cpu", quiet=True, sections=["loss", "eval"], budget_s=60.0, shapes={})
    sections = gpu_suite.measure(args)["sections"]
    assert sections["loss"]["error"] == "RuntimeError: boom" and sections["loss"]["rows"] == []
    assert any("boom" in line for line in sections["loss"]["traceback"])
    assert sections["eval"]["rows"] == [{"device": "cpu"}] and "error" not in sections["eval"]


@pytest.mark.parametrize("name, bandwidth, flops", [
    ("NVIDIA H100 80GB HBM3", 3.35e12, 989e12), ("NVIDIA H100 PCIe", 2.0e12, 756e12), ("NVIDIA H200", 4.8e12, 989e12),
    ("NVIDIA A100-SXM4-80GB", 2.0e12, 312e12), ("NVIDIA A100 80GB PCIe", 2.0e12, 312e12), ("NVIDIA GH200 480GB", None, None),
    ("Tesla T4", None, None), (None, None, None)])
def test_device_peaks_by_name(name, bandwidth, flops):
    assert gpu_suite.peaks(name) == (bandwidth, flops)


def test_memory_beyond_the_gradient_subtracts_the_inputs_gradients_out_of_place_only():
    common = dict(dtype="float32", rows=1000, states=500, time=1e-3, time_ratio=1.0, bandwidth=None, bandwidth_fraction=None)
    gradient = 4 * 1000 * 500  # the [N, V + 1] float32 gradient, 2 MB
    rows = [{**common, "candidate": "ddlm_triton", "memory": gradient + 30_000_000},
            {**common, "candidate": "ddlm_triton_inplace", "memory": 10_000_000},
            {**common, "candidate": "sedd_eager", "memory": None}]
    lines = gpu_suite.kernel_table(rows, head=False)
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert [row[6] for row in cells] == ["0.03", "0.01", "n/a"]
    head = {**common, "candidate": "linear_dse", "hidden": 10, "memory": 4 * (1000 * 10 + 500 * 10) + 20_000_000, "tflops": 1.0,
            "flops_fraction": None}
    assert gpu_suite.kernel_table([head], head=True)[2].split("|")[7].strip() == "0.02"
