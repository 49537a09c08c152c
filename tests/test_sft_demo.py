"""benchmarks/sft_demo.py: a --quick smoke run end to end (data, base, SFT, accuracy, bound, report), and its reuse."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sft_demo_module():
    spec = importlib.util.spec_from_file_location("sft_demo", ROOT / "benchmarks" / "sft_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_demo"] = module
    spec.loader.exec_module(module)
    return module


def test_sft_rows_end_the_prompt_with_the_separator_and_start_the_response_with_a_space():
    demo = sft_demo_module()
    row = demo.sft_row({"prompt": "Sort the numbers: 7 2 9", "response": "2 7 9", "task": "sort"})
    assert row == {"prompt": "Sort the numbers: 7 2 9 =>", "response": " 2 7 9", "task": "sort"}


def test_quick_run_writes_the_results_and_reuses_finished_parts(tmp_path, monkeypatch):
    demo = sft_demo_module()
    monkeypatch.chdir(tmp_path)
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--quick", "--quiet", "--work", str(work), "--results", str(results)]
    record = demo.main(argv)

    rows = [json.loads(line) for line in (work / "data" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["prompt"].endswith(" =>") and r["response"].startswith(" ") for r in rows)
    assert set(record["models"]) == {"base", "sft_full"}
    for model in record["models"].values():
        for decoding in demo.DECODINGS:
            accuracy = model["accuracy"][decoding]
            assert accuracy["n"] == 8 and 0 <= accuracy["overall"] <= 1
            assert set(accuracy["per_task"]) == set(demo.instruction_tasks.TASKS)
    bounds = record["models"]["sft_full"]["bounds"]
    assert bounds[0]["step"] == 0 and bounds[-1]["step"] == 2 and all(b["bound"] > 0 for b in bounds)
    assert (work / "sft_full" / "final" / "config.json").is_file()
    assert json.loads((results / "sft_demo.json").read_text())["models"]["sft_full"]["bounds"] == bounds
    table = (results / "sft_demo.md").read_text()
    assert "| base (quickstart) |" in table and "| SFT, full |" in table and "before SFT" in table

    again = demo.main(argv)  # the finished base and SFT runs are reused, not retrained
    assert again["models"]["base"]["reused"] and again["models"]["sft_full"]["reused"]
    assert again["models"]["sft_full"]["bounds"] == bounds
