"""benchmarks/finetune_cost.py: a tiny run of its measuring functions gives every configuration a row of the table
(structure, not timings); --report-only writes the same table again; the stored table is its stored JSON's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")  # the LoRA row

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import finetune_cost  # noqa: E402
import harness  # noqa: E402

TINY = ["--shapes", "32x1:2:2", "--length", "16", "--vocab", "64", "--rounds", "2", "--quiet"]


def test_prompt_mask_and_shapes():
    mask = finetune_cost.prompt_mask(0.25, 3, 16)
    assert mask.shape == (3, 16) and mask[:, :4].all() and not mask[:, 4:].any()
    assert finetune_cost.prompt_mask(None, 3, 16) is None
    assert finetune_cost.parse_shape("128x4:4:32") == {"hidden": 128, "layers": 4, "heads": 4, "batch": 32}
    assert finetune_cost.shape_name(finetune_cost.parse_shape("512x8:8:4")) == "512x8:8:4"
    with pytest.raises(Exception, match="HIDDENxLAYERS"):
        finetune_cost.parse_shape("128x4")


def test_every_parameter_gets_a_gradient():
    """The randomised start: no all-zero parameter, so full fine-tuning trains every layer."""
    config = finetune_cost.model_config(finetune_cost.parse_shape("32x1:2:2"), 64, 16)
    state = finetune_cost.initial_state(config)
    assert all(bool(t.any()) for t in state.values() if t.is_floating_point())
    trainer = finetune_cost.Trainer("sft 1/2", config, state, finetune_cost.batches(finetune_cost.parse_shape("32x1:2:2"), 64, 16))
    trainer.step()
    assert all(p.grad is not None and bool(p.grad.any()) for p in trainer.parameters)


def test_tiny_run_table(tmp_path):
    args = finetune_cost.parse_args([*TINY, "--no-rss", "--results", str(tmp_path)])
    shapes = [finetune_cost.parse_shape(text) for text in ["32x1:2:2"]]
    args.shapes = ["32x1:2:2"]
    measured = finetune_cost.measure(finetune_cost.argparse.Namespace(**{**vars(args), "shapes": shapes}), TINY)
    record = harness.report(finetune_cost.NAME, args, lambda: measured, finetune_cost.markdown)
    rows = record["shapes"][0]["rows"]
    assert list(rows) == finetune_cost.CONFIGS
    assert rows["lora sft 1/2"]["trainable"] < rows["sft 1/2"]["trainable"] == rows["pretrain"]["trainable"]
    assert all(row["allocated_peak"] > 0 and len(row["round_steps"]) == 2 for row in rows.values())
    table = [line for line in (tmp_path / f"{finetune_cost.NAME}.md").read_text().splitlines() if line.startswith("| 32x1")]
    assert [line.split(" | ")[1] for line in table] == finetune_cost.CONFIGS
    cells = [line.strip("|").split("|") for line in table]
    assert all(len(c) == 11 for c in cells)
    assert cells[0][4].strip() == cells[0][5].strip() == cells[0][7].strip() == "1.00"  # pretrain against itself
    assert [c[10].strip() for c in cells] == ["pretrain", "pretrain", "pretrain", "sft 1/2"]
    assert "Command: `" in (tmp_path / f"{finetune_cost.NAME}.md").read_text()

    text = (tmp_path / f"{finetune_cost.NAME}.md").read_text()
    (tmp_path / f"{finetune_cost.NAME}.md").unlink()
    result = subprocess.run([sys.executable, str(BENCHMARKS / "finetune_cost.py"), "--report-only", "--quiet", "--results",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"{finetune_cost.NAME}.md").read_text() == text


def test_rss_child_reports_a_peak():
    """The fresh-process measure of one configuration (run here in-process: its keys and sign)."""
    out = finetune_cost.child("lora sft 1/2", finetune_cost.parse_shape("32x1:2:4"), 64, 16)
    assert set(out) == {"rss_peak", "rss_base"} and out["rss_peak"] >= 0 and out["rss_base"] > 0


def test_stored_table_rebuilt_from_json():
    stored = BENCHMARKS / "results" / finetune_cost.NAME
    record = json.loads(stored.with_suffix(".json").read_text(encoding="utf-8"))
    assert finetune_cost.markdown(record) == stored.with_suffix(".md").read_text(encoding="utf-8")
