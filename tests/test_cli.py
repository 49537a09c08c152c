"""The command line: the demo, and sample / infill / eval on a saved model."""

import math
import re

import pytest
import torch

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.cli import SEPARATOR, main
from ddlm.pipeline import DiffusionPipeline
from helpers import OracleModel, randomised, save_tiny_pipeline


def test_demo_prints_sampler_tv_and_bounds_against_exact_answers(capsys):
    main(["demo", "--samples", "400", "--steps", "8", "--num-t", "16", "--seed", "3"])
    out = capsys.readouterr().out
    for predictor in ["euler", "tau_leaping", "analytic"]:
        assert len(re.findall(rf"{predictor} \(8 steps\): TV 0\.\d{{4}}", out)) == 2
    assert len(re.findall(r"bound \d+\.\d{3} \+- \d+\.\d{3} nats .* true -log p = \d+\.\d{3}", out)) == 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    """A saved untrained absorbing pipeline (its bound is exactly log 300 nats per token)."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 32)


def test_sample_prints_the_requested_number_of_texts(model_dir, capsys):
    main(["sample", str(model_dir), "--num-samples", "3", "--length", "8", "--steps", "4", "--quiet"])
    assert capsys.readouterr().out.count(SEPARATOR) == 2


def test_infill_prints_the_template_with_its_gaps_filled(model_dir, capsys):
    main(["infill", str(model_dir), "Now is the winter{{3}} of our{{2}}", "--num-samples", "2", "--steps", "4", "--quiet"])
    texts = capsys.readouterr().out[:-1].split(f"\n{SEPARATOR}\n")
    assert len(texts) == 2 and all(t.startswith("Now is the winter") and " of our" in t for t in texts)


ESTIMATE = ("tokens", "blocks", "t/block", "estimator", "calls/tok", "integral", "prior", "bound", "+-", "stderr")
PER_TOKEN = ("per_token", "+-", "stderr_per_token", "ppl", "low", "high", "ratio", "bits_per_byte")


def eval_rows(out: str) -> dict[tuple[str, str], dict[str, str]]:
    """``ddlm eval``'s table by (file, model): each model's two rows (the estimate, then per token) by column name."""
    rows, file, names = {}, None, None
    for line in out.splitlines():
        if line.startswith("file: "):
            file = line[len("file: "):]
        elif line.startswith("model "):
            names = ESTIMATE if "tokens" in line else PER_TOKEN
        elif re.match(r"#\d+ ", line):
            model, *values = line.replace("[", "").replace(",", "").replace("]", "").split()
            rows.setdefault((file, model), {}).update(zip(names, values, strict=True))
    return rows


def table_row(out: str, model: str = "#1") -> dict[str, str]:
    """The columns of ``model``'s rows for the first file of ``ddlm eval``'s table."""
    return next(row for (file, name), row in eval_rows(out).items() if name == model)


def test_eval_prints_a_bound_per_file_with_error_bars(model_dir, text_data, tmp_path, capsys):
    text = (text_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:300]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    main(["eval", str(model_dir), str(tmp_path / "a.txt"), "--num-t", "32", "--quiet"])
    row = table_row(capsys.readouterr().out)
    tokens, num_t, integral, prior = int(row["tokens"]), int(row["t/block"]), float(row["integral"]), float(row["prior"])
    bound, stderr, ppl = float(row["bound"]), float(row["stderr"]), float(row["ppl"])
    assert num_t == 32 and bound == pytest.approx(integral + prior, abs=0.02)
    assert abs(bound - tokens * math.log(300)) < 3 * stderr + 1e-3 * tokens
    assert ppl == pytest.approx(math.exp(bound / tokens), rel=1e-3)



def test_eval_on_exact_ratios_gives_the_core_bound_and_the_true_likelihood(tmp_path, monkeypatch, capsys):
    """With an exact-ratio oracle as the model, the command's numbers are the core nll_bound's, and the
    bound is -log p within its error bars."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import ddlm.evaluation.scoring
    from ddlm import SequenceOracle
    from ddlm.likelihood import nll_bound

    words = ["a", "b", "c", "d"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    oracle = SequenceOracle.random(ddlm.Absorbing(4), 3, torch.Generator().manual_seed(11))
    model = OracleModel(oracle)
    monkeypatch.setattr(ddlm.evaluation.scoring, "load_model", lambda path, **kwargs: (model, tokenizer))
    x0 = oracle.sample(2, torch.Generator().manual_seed(3))  # two blocks of one file
    (tmp_path / "t.txt").write_text(" ".join(words[i] for i in x0.flatten().tolist()))
    main(["eval", "oracle", str(tmp_path / "t.txt"), "--num-t", "256", "--seed", "5", "--quiet"])
    row = table_row(capsys.readouterr().out)
    core = nll_bound(oracle.score_fn, model.graph, model.noise, x0, 256, torch.Generator().manual_seed(5))
    assert (int(row["tokens"]), int(row["blocks"]), int(row["t/block"])) == (6, 2, 256)
    assert float(row["integral"]) == pytest.approx(float(core.integral.sum()), abs=0.006)
    assert float(row["prior"]) == pytest.approx(float(core.prior.sum()), abs=0.006)
    assert float(row["stderr"]) == pytest.approx(float(core.stderr.square().sum().sqrt()), abs=0.006)
    true_nll = -float(oracle.log_prob(x0).sum())
    assert abs(float(row["bound"]) - true_nll) < 3 * float(row["stderr"]) + 0.01


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory, byte_tokenizer):
    """A saved AR model with random weights and the same tokenizer as model_dir."""
    path = tmp_path_factory.mktemp("ar")
    randomised(DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), max_position_embeddings=32, objective="ar")).save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path


def test_eval_gives_an_ar_model_its_exact_perplexity(ar_dir, byte_tokenizer, text_data, tmp_path, capsys):
    """The AR row is the cross-entropy of the model's logits over every token of every block, the first
    conditioned on EOS, computed here directly."""
    model = DDLMForDiffusion.from_pretrained(ar_dir).eval()
    text = (text_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:400]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    main(["eval", str(ar_dir), str(tmp_path / "a.txt"), "--quiet"])
    out = capsys.readouterr().out
    row = table_row(out)
    ids = torch.tensor(byte_tokenizer(text, add_special_tokens=False)["input_ids"])
    total, captured = 0.0, {}
    handle = model.lm_head.register_forward_hook(lambda module, args, out: captured.__setitem__("logits", out))
    with torch.no_grad():
        for block in ids.split(32):
            model(torch.cat([torch.tensor([byte_tokenizer.eos_token_id]), block[:-1]])[None])
            total += float(torch.nn.functional.cross_entropy(captured["logits"][0].double(), block, reduction="sum"))
    handle.remove()
    assert "AR, exact" in out and row["t/block"] == row["estimator"] == "exact" and float(row["stderr"]) == 0
    assert int(row["tokens"]) == ids.numel() and int(row["blocks"]) == math.ceil(ids.numel() / 32)
    assert float(row["bound"]) == pytest.approx(total, abs=0.006)
    assert float(row["ppl"]) == pytest.approx(math.exp(total / ids.numel()), rel=1e-4)


def test_eval_compares_models_on_the_same_files_in_one_table(model_dir, ar_dir, text_data, tmp_path, capsys):
    text = (text_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    for name, start in [("a.txt", 0), ("b.txt", 5000)]:
        (tmp_path / name).write_text(text[start:start + 300], encoding="utf-8")
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    main(["eval", str(model_dir), *files, "--compare", str(ar_dir), "--num-t", "8", "--quiet"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("#1: ") and "absorbing diffusion, bound" in lines[0] and "AR, exact" in lines[1]
    rows = eval_rows(out)
    assert list(rows) == [(files[0], "#1"), (files[0], "#2"), (files[1], "#1"), (files[1], "#2")]
    for path in files:
        first, second = rows[path, "#1"], rows[path, "#2"]
        assert first["tokens"] == second["tokens"] and first["blocks"] == second["blocks"]  # one tokenizer
        assert float(first["ratio"]) == 1.0
        assert float(second["ratio"]) == pytest.approx(float(second["ppl"]) / float(first["ppl"]), abs=2e-3)
    assert "(AR: exact" in out and "(diffusion: upper bound" in out
    assert max(len(line) for line in lines if not line.startswith(("#1: ", "#2: ", "file: "))) <= 100


def test_quality_prints_the_metrics_of_the_samples_each_setting_draws(model_dir, ar_dir, capsys):
    from ddlm.sample_quality import sample_metrics

    main(["quality", str(model_dir), "--reference", str(ar_dir), "--predictors", "euler", "analytic", "--steps", "2", "4",
          "--num-samples", "3", "--length", "8", "--seed", "7", "--quiet"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert [(r[0], int(r[1])) for r in rows] == [("euler", 2), ("euler", 4), ("analytic", 2), ("analytic", 4)]
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    reference = DDLMForDiffusion.from_pretrained(ar_dir).eval()
    ids = pipe.sample(3, 8, 4, "analytic", seed=7, progress=False)  # the same seed draws the same samples
    expected = sample_metrics(reference, ids, pipe.tokenizer.eos_token_id)
    assert [float(v) for v in rows[3][2:]] == pytest.approx(
        [expected[k] for k in ("gen_ppl", "entropy", "distinct_2", "distinct_4")], abs=0.006)


def test_quality_needs_an_ar_reference_and_retokenises_for_another_tokenizer(model_dir, ar_dir, text_data, tmp_path, capsys):
    from ddlm.tokenization import train_byte_bpe

    with pytest.raises(SystemExit) as exit_info:
        main(["quality", str(model_dir), "--reference", str(model_dir), "--steps", "2", "--num-samples", "2", "--quiet"])
    assert exit_info.value.code == 2 and "not an autoregressive model" in capsys.readouterr().err
    other = tmp_path / "other"  # the same AR model with a tokenizer of the same size trained on other text
    DDLMForDiffusion.from_pretrained(ar_dir).save_pretrained(other)
    text = (text_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:100_000]
    train_byte_bpe([text], 300).save_pretrained(other)
    main(["quality", str(model_dir), "--reference", str(other), "--predictors", "analytic", "--steps", "2", "--num-samples", "2",
          "--length", "8", "--quiet"])
    out = capsys.readouterr().out
    assert "decoded and re-tokenised" in out and math.isfinite(float(out.splitlines()[2].split()[2]))


def test_eval_scores_a_file_shorter_than_a_block_and_says_so(model_dir, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("To be, or not", encoding="utf-8")
    main(["eval", str(model_dir), str(tmp_path / "short.txt"), "--num-t", "8", "--quiet"])
    captured = capsys.readouterr()
    assert "has 9 tokens, fewer than model #1's block of 32; scored as one shorter block" in captured.err
    assert int(table_row(captured.out)["blocks"]) == 1


def test_bad_paths_exit_with_a_message(model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "text.txt").write_text("Some text to score.")
    for argv, message in [(["eval", str(tmp_path / "missing"), str(tmp_path / "text.txt")], "no model directory"),
                          (["eval", str(model_dir), str(tmp_path / "text.txt"), "--compare", str(tmp_path / "missing")], "no model directory"),
                          (["eval", str(model_dir), str(tmp_path / "empty.txt")], "is empty"),
                          (["eval", str(model_dir), str(tmp_path / "nofile.txt")], "No such file"),
                          (["sample", str(tmp_path)], "not a ddlm model directory")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_train_overrides_may_follow_its_options():
    from ddlm.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(parser, ["train", "quickstart", "--resume", "train.steps=3000", "train.lr=5e-4"])
    assert args.resume and args.recipe == "quickstart" and args.overrides == ["train.steps=3000", "train.lr=5e-4"]
    args = parse_args(parser, ["train", "quickstart", "train.steps=10", "--resume", "train.lr=5e-4"])
    assert args.overrides == ["train.steps=10", "train.lr=5e-4"]


@pytest.mark.parametrize("argv", [["train", "quickstart", "--resume", "--bogus"], ["train", "quickstart", "--resume", "stray"],
                                  ["sample", "model", "train.steps=3"]])
def test_words_that_are_not_overrides_are_still_refused(argv, capsys):
    from ddlm.cli import main

    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("tokenizer", ["./no-such-tokenizer", "no/such/tokenizer", "~/no-such-tokenizer-dir"])
def test_a_missing_tokenizer_path_is_named_as_missing(model_dir, tmp_path, capsys, tokenizer):
    for argv in [["sample", str(model_dir), "--tokenizer", tokenizer, "--quiet"],
                 ["convert", "sedd", str(tmp_path / "source"), str(tmp_path / "out"), "--tokenizer", tokenizer]]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and lines == [f"ddlm {argv[0]}: error: tokenizer {tokenizer} does not exist"]
    assert not (tmp_path / "out").exists()
