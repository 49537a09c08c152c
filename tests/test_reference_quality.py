"""Generative perplexity under any causal LM with its own tokenizer: re-tokenised scores against direct
computations (one window, sliding windows, the EOS rule), the quality command with a transformers reference,
and MAUVE."""

import math
import sys

import pytest
import torch

from ddlm.cli import main
from ddlm.sample_quality import (load_reference, mauve_score, reference_nll, reference_perplexity, reference_token_ids,
                                 sample_pieces, windows)
from helpers import save_tiny_pipeline

WINDOW = 16


@pytest.fixture(scope="module")
def other_tokenizer(text_data):
    """A byte-level BPE of 280 tokens trained on WikiText: not the samples' tokenizer (tinyshakespeare, 300)."""
    from ddlm.tokenization import train_byte_bpe

    text = (text_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:60_000]
    return train_byte_bpe([text[i:i + 10_000] for i in range(0, len(text), 10_000)], 280)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, other_tokenizer):
    """A tiny random GPT2LMHeadModel with a context window of 16 tokens, saved with its own tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(other_tokenizer), n_positions=WINDOW, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=other_tokenizer.eos_token_id, bos_token_id=other_tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # outputs depend on every weight
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    other_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(gpt2_dir):
    return load_reference(gpt2_dir)


def token_log_prob(model, context: list[int], target: int) -> float:
    """log p(target | context) from one forward of the context alone: log_softmax of the last logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
    return float(torch.log_softmax(logits, -1)[target])


def test_a_samples_score_is_the_reference_log_likelihood_of_its_text(reference, byte_tokenizer, other_tokenizer):
    texts = ["KING RICHARD: thou art my lord", "ROMEO: thy sweet and noble"]
    samples = torch.tensor([byte_tokenizer(t)["input_ids"][:7] for t in texts])
    decoded = [byte_tokenizer.decode(row) for row in samples.tolist()]
    nats, count, differ = 0.0, 0, False
    for text in decoded:
        ids = other_tokenizer(text)["input_ids"]  # the reference's own tokens of the sample's text
        assert 2 <= len(ids) <= WINDOW
        differ |= ids != byte_tokenizer(text)["input_ids"]
        nats -= sum(token_log_prob(reference.model, ids[:i], ids[i]) for i in range(1, len(ids)))
        count += len(ids) - 1  # the first token has no context and is not scored
    assert differ  # the two tokenizers split the samples' text differently
    assert reference_perplexity(reference, samples, byte_tokenizer) == pytest.approx(math.exp(nats / count), rel=1e-6)
    assert reference_perplexity(reference, samples, byte_tokenizer, batch_size=1) == pytest.approx(math.exp(nats / count), rel=1e-6)


def test_long_samples_are_scored_in_sliding_windows(reference, text_data):
    ids = reference.tokenizer((text_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:400])["input_ids"][:45]
    assert windows(45, WINDOW) == [(0, 16, 1), (8, 24, 16), (16, 32, 24), (24, 40, 32), (32, 45, 40)]
    stride = WINDOW // 2
    expected = 0.0
    for i in range(1, len(ids)):  # token i reads the tokens since the start of the last window that ends after it
        begin = 0 if i < WINDOW else stride * ((i - WINDOW) // stride + 1)
        assert WINDOW - stride <= i - begin < WINDOW or begin == 0
        expected -= token_log_prob(reference.model, ids[begin:i], ids[i])
    nats, counts = reference_nll(reference, [ids])
    assert counts == [44] and nats[0] == pytest.approx(expected, rel=1e-6)


def test_tokens_after_the_first_eos_are_scored_but_later_eos_tokens_are_not(reference, byte_tokenizer, other_tokenizer):
    eos, ref_eos = byte_tokenizer.eos_token_id, other_tokenizer.eos_token_id
    a, b = byte_tokenizer("the king")["input_ids"], byte_tokenizer(" and all")["input_ids"]
    samples = torch.tensor([a + [eos] + b + [eos, eos]])
    pieces = sample_pieces(samples, byte_tokenizer)
    assert pieces == [["the king", " and all", "", ""]]
    ids = other_tokenizer("the king")["input_ids"] + [ref_eos] + other_tokenizer(" and all")["input_ids"] + [ref_eos, ref_eos]
    assert reference_token_ids(reference, pieces) == [ids]
    first_eos = ids.index(ref_eos)
    scored = [i for i in range(1, len(ids)) if ids[i] != ref_eos or i == first_eos]  # MDLM: the first EOS counts, later ones not
    expected = -sum(token_log_prob(reference.model, ids[:i], ids[i]) for i in scored)
    nats, counts = reference_nll(reference, [ids])
    assert counts == [len(scored)] == [len(ids) - 3] and nats[0] == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 32)


def test_quality_scores_samples_under_a_transformers_reference_with_another_tokenizer(model_dir, gpt2_dir, reference, capsys):
    from ddlm.pipeline import DiffusionPipeline

    main(["quality", str(model_dir), "--reference", str(gpt2_dir), "--predictors", "analytic", "--steps", "3",
          "--num-samples", "3", "--length", "12", "--seed", "7", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert "re-tokenised, windows of 16 tokens" in out[0]
    row = out[2].split()
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    ids = pipe.sample(3, 12, 3, "analytic", seed=7, progress=False)  # the same seed draws the same samples
    assert float(row[2]) == pytest.approx(reference_perplexity(reference, ids, pipe.tokenizer), abs=0.006)


def test_a_reference_that_cannot_be_loaded_exits_2_with_one_line(model_dir, tmp_path, capsys):
    for bad, message in [(tmp_path / "missing", "cannot load the reference LM"), (model_dir, "not an autoregressive model")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["quality", str(model_dir), "--reference", str(bad), "--steps", "2", "--num-samples", "2", "--quiet"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_mauve_without_its_package_is_a_clear_error(model_dir, gpt2_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "human.txt").write_text("Some held-out text.", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "mauve", None)  # as if mauve-text were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["quality", str(model_dir), "--reference", str(gpt2_dir), "--steps", "2", "--num-samples", "2", "--quiet",
              "--mauve", str(tmp_path / "human.txt")])
    assert exit_info.value.code == 2 and "needs the mauve-text package: pip install mauve-text" in capsys.readouterr().err


def test_mauve_scores_texts_against_held_out_text(reference, text_data):
    pytest.importorskip("mauve")
    text = (text_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:20_000]
    same = [text[i:i + 60] for i in range(10_000, 16_000, 200)]  # 30 pieces of the same source
    noise = ["zq xv " * 10 for _ in range(30)]
    close, far = mauve_score(reference, same, text[:10_000]), mauve_score(reference, noise, text[:10_000])
    assert 0 < far < close <= 1
