"""benchmarks/adapt.py (an AR model adapted into a diffusion model vs diffusion from scratch): its --help, a smoke run
of the whole pipeline on tiny settings (--quick) with the table's structure checked, --report-only rebuilding that
table, and the stored table rebuilt byte for byte from its stored JSON."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
DATA = Path(__file__).resolve().parent / "data"  # the WikiText-2 excerpt kept in the repository


def run(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "adapt.py"), *options], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_help_names_the_options():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--ks", "--ablation-k", "--lrs", "--anneal-fraction", "--scratch", "--report-only", "--threads", "--quick"):
        assert option in result.stdout


def test_ablation_k_must_be_one_of_the_ks(tmp_path):
    result = run("--ks", "125", "500", "--ablation-k", "250", "--work", str(tmp_path))
    assert result.returncode == 2 and "--ablation-k 250 must be one of --ks" in result.stderr


def test_quick_run_writes_the_tables(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    result = run("--quick", "--quiet", "--threads", "1", "--data-dir", str(DATA), "--work", str(work), "--results", str(results),
                 "--scratch", "absorbing", "--lrs", "1e-3", "3e-4")
    assert result.returncode == 0, result.stderr
    record = json.loads((results / "adapt.json").read_text())
    rows, runs = record["rows"], record["runs"]
    assert record["lr"] in (1e-3, 3e-4) and set(record["lr_trial"]) == {"0.001", "0.0003"}
    adapted = {(row["k"], row["lr"], row["shift"], row["anneal"]) for row in rows.values() if row["kind"] == "adapted"}
    lr = record["lr"]
    assert {(0, None, True, 0), (0, None, False, 0), (4, lr, True, 1), (8, lr, True, 2), (4, lr, False, 1), (4, lr, True, 0),
            (4, lr, False, 0)} <= adapted
    assert sorted(row["steps"] for row in rows.values() if row["kind"] == "ar") == [6, 14]
    assert [row["steps"] for row in rows.values() if row["kind"] == "absorbing"] == [14]
    ar_tokens = runs["ar"]["tokens"]
    assert ar_tokens == 6 * 32 * 32 and runs["adapt-k8-lr{:g}-shift1-anneal2".format(lr)]["tokens"] == 8 * 32 * 32
    for run_name, score in record["scores"].items():
        exact = rows[run_name]["kind"] == "ar"
        assert score["integral"] > 0 and (score["stderr"] == 0) == exact and score["num_tokens"] == record["scores"]["ar"]["num_tokens"]
    text = (results / "adapt.md").read_text()
    lines = text.splitlines()
    header = "| model | extra diffusion tokens | total tokens | held-out ppl | ± 2 SE | × AR | × AR at equal tokens | train time |"
    start = lines.index(header)
    main = [line for line in lines[start + 2:] if line.startswith("|")][:6]  # 2 AR, K = 0, K = 4, K = 8, from scratch
    assert [line.split(" | ")[0] for line in main[:6]] == [
        "| AR, 6 steps (exact)", "| AR, 14 steps (exact)", "| adapted, K = 0 (AR weights, no diffusion training)",
        "| adapted, K = 4 (shift on, anneal 1)", "| adapted, K = 8 (shift on, anneal 2)", "| absorbing from scratch, 14 steps"]
    assert all(len(line.split(" | ")) == 8 for line in main)
    assert "| 0.00M | 0.01M |" in main[0]  # 6 x 32 x 32 = 6144 AR tokens, none of diffusion
    assert "| 0.01M | 0.01M |" in main[4]  # adapted K = 8: 8192 diffusion tokens, 14336 in all (rounded)
    assert "exact" in main[0] and "[" in main[4]
    assert "**Target**" in text and ("**MET**" in text or "**NOT MET**" in text)
    assert "× AR at equal tokens" in text and "**Ablations** at K = 4" in text and "**Learning rate**" in text
    ablation = lines.index("| model | shift_logits | anneal_steps | held-out ppl | ± 2 SE | × AR | × default (shift on, annealed) |")
    assert [line.split(" | ")[1:3] for line in lines[ablation + 2:ablation + 8]] == [
        ["on", "0"], ["off", "0"], ["on", "1"], ["on", "0"], ["off", "1"], ["off", "0"]]
    if importlib.util.find_spec("matplotlib"):
        assert (results / "adapt.png").stat().st_size > 0

    (results / "adapt.md").unlink()
    rebuilt = run("--report-only", "--quiet", "--quick", "--work", str(work), "--results", str(results))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (results / "adapt.md").read_text() == text


@pytest.mark.skipif(not (RESULTS / "adapt.json").is_file(), reason="no stored adapt.json yet")
def test_report_only_rebuilds_stored_table(tmp_path):
    (tmp_path / "adapt.json").write_bytes((RESULTS / "adapt.json").read_bytes())
    result = run("--report-only", "--quiet", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "adapt.md").read_bytes() == (RESULTS / "adapt.md").read_bytes()
