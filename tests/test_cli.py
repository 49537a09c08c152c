"""The command line: the demo, and sample / infill / eval on a saved model."""

import math
import re

import pytest

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.cli import SEPARATOR, main
from ddlm.pipeline import DiffusionPipeline


def test_demo_prints_sampler_tv_and_bounds_against_exact_answers(capsys):
    main(["demo", "--samples", "400", "--steps", "8", "--num-t", "16", "--seed", "3"])
    out = capsys.readouterr().out
    for predictor in ["euler", "tau_leaping", "analytic"]:
        assert len(re.findall(rf"{predictor} \(8 steps\): TV 0\.\d{{4}}", out)) == 2
    assert len(re.findall(r"bound \d+\.\d{3} \+- \d+\.\d{3} nats .* true -log p = \d+\.\d{3}", out)) == 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    """A saved untrained absorbing pipeline (its bound is exactly log 300 nats per token)."""
    path = tmp_path_factory.mktemp("model")
    config = DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), max_position_embeddings=32)
    DiffusionPipeline(DDLMForDiffusion(config), byte_tokenizer).save_pretrained(path)
    return path


def test_sample_prints_the_requested_number_of_texts(model_dir, capsys):
    main(["sample", str(model_dir), "--num-samples", "3", "--length", "8", "--steps", "4", "--quiet"])
    assert capsys.readouterr().out.count(SEPARATOR) == 2


def test_infill_prints_the_template_with_its_gaps_filled(model_dir, capsys):
    main(["infill", str(model_dir), "Now is the winter{{3}} of our{{2}}", "--num-samples", "2", "--steps", "4", "--quiet"])
    texts = capsys.readouterr().out[:-1].split(f"\n{SEPARATOR}\n")
    assert len(texts) == 2 and all(t.startswith("Now is the winter") and " of our" in t for t in texts)


def test_eval_prints_a_bound_per_file_with_error_bars(model_dir, shared_data, tmp_path, capsys):
    text = (shared_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:300]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    main(["eval", str(model_dir), str(tmp_path / "a.txt"), "--num-t", "32", "--quiet"])
    row = capsys.readouterr().out.splitlines()[1].split()
    tokens, bound, stderr, ppl = int(row[1]), float(row[3]), float(row[5]), float(row[9])
    assert abs(bound - tokens * math.log(300)) < 3 * stderr + 1e-3 * tokens
    assert ppl == pytest.approx(math.exp(bound / tokens), rel=1e-3)


def test_bad_paths_exit_with_a_message(model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    for argv, message in [(["eval", str(tmp_path / "missing"), "x.txt"], "no model directory"),
                          (["eval", str(model_dir), str(tmp_path / "empty.txt")], "is empty"),
                          (["eval", str(model_dir), str(tmp_path / "nofile.txt")], "No such file"),
                          (["sample", str(tmp_path)], "not a ddlm model directory")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
