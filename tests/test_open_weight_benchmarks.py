"""The open-weight benchmarks: sampler overhead of a BERT-shaped masked LM (benchmarks/sampler_overhead.py
--family bert) and host memory per parameter when loading in bfloat16 (benchmarks/load_memory.py): their
--help, tiny runs, and their stored tables rebuilt byte for byte by --report-only."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run(script: str, *options: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *options], capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD})


def test_help_names_the_new_options():
    overhead, memory = run("sampler_overhead", "--help"), run("load_memory", "--help")
    assert overhead.returncode == 0 and "--family" in overhead.stdout and "bert" in overhead.stdout
    assert memory.returncode == 0 and "--report-only" in memory.stdout and "--models" in memory.stdout


def test_bert_family_refuses_ddlm_networks(tmp_path):
    result = run("sampler_overhead", "--family", "bert", "--configs", "small", "--results", str(tmp_path))
    assert result.returncode == 2 and "--family bert runs" in result.stderr and not list(tmp_path.iterdir())


def test_tiny_bert_sampler_overhead(tmp_path):
    result = run("sampler_overhead", "--family", "bert", "--configs", "bert-tiny", "--repeats", "1", "--quiet",
                 "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_overhead_bert_cpu.json", "sampler_overhead_bert_cpu.md"]
    record = json.loads((tmp_path / "sampler_overhead_bert_cpu.json").read_text())
    assert [(r["network"], r["process"], r["cached"], r["predictor"]) for r in record["rows"]] == [
        ("bert-tiny", "absorbing", cached, predictor) for cached in (True, False) for predictor in ("euler", "analytic")]
    for row in record["rows"]:
        assert row["vocab"] == 30522 and row["rows_scored"][0] == row["length"] == 16 and len(row["repeats"]["full"]) == 1
        assert all(r > 0 for r in (row["forward"], row["full"], row["restricted"], row["actual"]))


def test_tiny_llada_load_memory(tmp_path):
    result = run("load_memory", "--models", "llada-tiny:sharded", "--repeats", "1", "--quiet", "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((tmp_path / "load_memory.json").read_text())["rows"]
    assert row["params"] == row["written_params"] and row["dtypes"] == ["bfloat16"]
    for mode in ("cold", "warm"):
        # every page of the checkpoint is resident once the weights are read: 2 bytes per parameter (+ the headers)
        assert 2.0 <= row[mode]["touched_checkpoint"] < 2.05
        assert row[mode]["touched_rss"] >= row[mode]["touched_checkpoint"] - 0.01
    assert "| llada-tiny | sharded |" in (tmp_path / "load_memory.md").read_text()


@pytest.mark.parametrize("script, name, options", [
    ("sampler_overhead", "sampler_overhead_bert_cpu", ["--family", "bert"]), ("load_memory", "load_memory", [])])
def test_report_only_rebuilds_stored_table(tmp_path, script, name, options):
    stored = RESULTS / name
    (tmp_path / f"{name}.json").write_bytes(stored.with_suffix(".json").read_bytes())
    result = run(script, "--report-only", "--quiet", "--results", str(tmp_path), *options)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"{name}.md").read_bytes() == stored.with_suffix(".md").read_bytes()
