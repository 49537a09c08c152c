"""benchmarks/masked_lm_example.py at toy size: it trains both masked LMs, saves them where ddlm loads them, and
reports finite numbers; --report-only rebuilds the same table from the JSON."""

import importlib.util
import math
from pathlib import Path

import pytest

import ddlm

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--vocab-size", "300", "--hidden", "16", "--layers", "1", "--heads", "2", "--length", "16", "--batch-size", "4",
        "--steps", "3", "--num-t", "2", "--pieces", "2", "--eval-chars", "1500", "--sample-length", "8", "--sample-steps", "4",
        "--infill", "ROMEO:\nI {{3}} thee", "--quiet"]


def example_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports harness from its folder
    spec = importlib.util.spec_from_file_location("masked_lm_example", ROOT / "benchmarks" / "masked_lm_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_the_example_trains_saves_loads_and_reports(tmp_path, monkeypatch, arch):
    example = example_module(monkeypatch)
    results, models = tmp_path / "results", tmp_path / "models"
    record = example.main([*TINY, "--arch", arch, "--results", str(results), "--out", str(models)])
    table = (results / "masked_lm_example.md").read_text(encoding="utf-8")
    assert (results / "masked_lm_example.json").is_file() and "| mlm15 |" in table and "| diffusion |" in table
    assert (models / "heldout.txt").read_text(encoding="utf-8") == example.split_corpus(example.CORPUS.read_text())[1][:1500]
    assert set(record["models"]) == {"mlm15", "diffusion"}
    for name, m in record["models"].items():
        numbers = [m["nats_per_token"], m["nats_per_token_stderr"], m["bits_per_byte"], m["final_train_loss"],
                   *m["cross_entropy"].values()]
        assert all(math.isfinite(x) and x > 0 for x in numbers), name
        assert m["steps"] == 3 and len(m["samples"]) == 2 and {"0.15", "0.5", "0.9", "0.05", "0.95"} <= set(m["cross_entropy"])
        assert math.isfinite(m["mean_cross_entropy"])
        assert m["infill"].startswith("ROMEO:\nI ") and m["infill"].endswith(" thee")
        pipe = ddlm.DiffusionPipeline.from_pretrained(models / name, progress=False)
        assert pipe.model.family == f"masked-lm ({arch})" and pipe.max_length == 16
        assert pipe.tokenizer.mask_token == "[MASK]" and pipe.tokenizer("a")["input_ids"][0] == pipe.tokenizer.cls_token_id
        ids = pipe.sample(2, 8, steps=4, seed=0, progress=False)
        assert not set(ids.flatten().tolist()) & set(pipe.tokenizer.all_special_ids)
    (results / "masked_lm_example.md").unlink()
    example.main(["--report-only", "--quiet", "--results", str(results)])
    assert (results / "masked_lm_example.md").read_text(encoding="utf-8") == table


def test_the_held_out_split_and_pieces_cover_the_text_at_line_starts(monkeypatch):
    example = example_module(monkeypatch)
    text = "".join(f"line {i}\n" for i in range(100))
    training, held_out = example.split_corpus(text)
    assert training + held_out == text and held_out.startswith("line ") and 0.08 < len(held_out) / len(text) < 0.11
    pieces = example.cut_in_pieces(held_out, 3)
    assert "".join(pieces) == held_out and len(pieces) == 3 and all(p.startswith("line ") and p.endswith("\n") for p in pieces)
