"""DiffusionPipeline: it adds no error to the core samplers and bound, and infill keeps the given text."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ddlm import Absorbing, DDLMConfig, DDLMForDiffusion, LogLinear, SequenceOracle
from ddlm.likelihood import nll_bound
from ddlm.pipeline import DiffusionPipeline
from ddlm.sampling import sample
from helpers import randomised

WORDS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def word_tokenizer():
    """Four whitespace-separated words, one token each: text for a 4-token oracle."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.fixture(scope="module")
def oracle_pipe(word_tokenizer):
    oracle = SequenceOracle.random(Absorbing(4), 3, torch.Generator().manual_seed(11))
    return oracle, DiffusionPipeline(oracle.score_fn, word_tokenizer, graph=oracle.graph, noise=LogLinear(), max_length=3)


def tiny_pipe(tokenizer, process, seed=0):
    config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), process=process, max_position_embeddings=64)
    return DiffusionPipeline(randomised(config, seed, std=0.1), tokenizer)


def test_generate_is_the_core_sampler_and_reproduces_the_oracle(oracle_pipe, word_tokenizer):
    oracle, pipe = oracle_pipe
    ids = pipe.sample(20_000, 3, steps=32, seed=5, progress=False)
    core = sample(oracle.score_fn, oracle.graph, LogLinear(), (20_000, 3), 32, generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(ids, core)
    assert oracle.total_variation(ids) < 0.04
    texts = pipe.generate(50, 3, steps=32, seed=6, progress=False)
    core = sample(oracle.score_fn, oracle.graph, LogLinear(), (50, 3), 32, generator=torch.Generator().manual_seed(6), progress=False)
    assert [word_tokenizer(t)["input_ids"] for t in texts] == core.tolist()


def test_nll_bound_is_the_core_bound(oracle_pipe):
    oracle, pipe = oracle_pipe
    x0 = oracle.sample(4, torch.Generator().manual_seed(3))
    texts = [" ".join(WORDS[i] for i in row) for row in x0.tolist()]
    results = pipe.nll_bound(texts, num_t=256, seed=2, progress=False)
    core = nll_bound(oracle.score_fn, oracle.graph, LogLinear(), x0, 256, torch.Generator().manual_seed(2))
    for i, r in enumerate(results):
        assert (r.integral, r.prior, r.stderr) == (float(core.integral[i]), float(core.prior[i]), float(core.stderr[i]))
        assert (r.num_tokens, r.num_blocks, r.num_bytes) == (3, 1, 5)
        assert r.bound > -float(oracle.log_prob(x0[i])) - 3 * r.stderr
        assert r.ppl == pytest.approx(math.exp(r.bound / 3))


def test_infill_samples_the_exact_conditional(oracle_pipe):
    oracle, pipe = oracle_pipe
    texts = pipe.infill(["b", 1, "d"], num_samples=4000, steps=16, seed=4, progress=False)
    assert all(t[0] == "b" and t[2] == "d" and len(t) == 3 for t in texts)
    counts = torch.tensor([sum(t[1] == w for t in texts) for w in WORDS], dtype=torch.float64)
    joint = oracle.log_prob(torch.tensor([[1, y, 3] for y in range(4)])).exp()
    assert 0.5 * (counts / 4000 - joint / joint.sum()).abs().sum() < 0.04


@pytest.mark.parametrize("process", ["absorbing", "uniform"])
def test_infill_keeps_every_given_character_and_fills_exactly_the_gap_lengths(byte_tokenizer, process):
    pipe = tiny_pipe(byte_tokenizer, process)
    template = "Ô Romeo, Romeo!{{4}} wherefore{{3}}art thou — «Romeo»?{{2}}"
    ids, given, spans = pipe.encode_template(template)
    assert int((~given).sum()) == 9 and [n for text, n in spans if text is None] == [4, 3, 2]
    tokens = pipe.sample(3, len(ids), steps=6, x_init=ids, fixed=given, seed=7, progress=False)
    assert torch.equal(tokens[:, given], ids[given].expand(3, -1))
    assert int(tokens.max()) < len(byte_tokenizer)  # denoised: no mask left
    texts = pipe.infill(template, num_samples=3, steps=6, seed=7, progress=False)
    listed = pipe.infill(["Ô Romeo, Romeo!", 4, " wherefore", 3, "art thou — «Romeo»?", 2], num_samples=3, steps=6, seed=7, progress=False)
    assert texts == listed
    gap_positions = (~given).nonzero().squeeze(1).split([4, 3, 2])
    for row, text in zip(tokens, texts):
        gaps = [pipe.decode(row[p]) for p in gap_positions]
        assert text == f"Ô Romeo, Romeo!{gaps[0]} wherefore{gaps[1]}art thou — «Romeo»?{gaps[2]}"


def test_prefix_and_suffix_prompting(byte_tokenizer):
    pipe = tiny_pipe(byte_tokenizer, "absorbing")
    assert all(t.startswith("To be, or not") for t in pipe.infill(["To be, or not", 6], 2, steps=4, seed=0, progress=False))
    assert all(t.endswith("that is the question.") for t in pipe.infill([6, "that is the question."], 2, steps=4, seed=0, progress=False))


def test_untrained_absorbing_model_bounds_text_at_log_n_per_token(byte_tokenizer, text_data):
    # adaLN-Zero + zero head: s_y = 1 / (N (e^sigma_bar - 1)) are the exact ratios of i.i.d. uniform tokens,
    # so the bound is -log p_uniform = n log N, also across blocks
    model = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), max_position_embeddings=64))
    pipe = DiffusionPipeline(model, byte_tokenizer)
    text = (text_data / "wikitext2.valid.txt").read_text(encoding="utf-8")[:700]
    (r,) = pipe.nll_bound([text], num_t=64, seed=0, progress=False)
    n = len(byte_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert r.num_tokens == n and r.num_blocks == math.ceil(n / 64) > 1 and r.num_bytes == len(text.encode())
    assert abs(r.bound - n * math.log(300)) < 3 * r.stderr + 1e-3 * n
    assert r.ppl_interval[0] < r.ppl < r.ppl_interval[1]
    assert r.bits_per_byte == pytest.approx(r.bound / math.log(2) / r.num_bytes)


def test_round_trip_through_save_pretrained(byte_tokenizer, tmp_path):
    pipe = tiny_pipe(byte_tokenizer, "uniform")
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.generate(2, 10, steps=4, seed=3, progress=False) == pipe.generate(2, 10, steps=4, seed=3, progress=False)
    pipe.model.save_pretrained(tmp_path / "model_only")
    with pytest.raises(ValueError, match="no tokenizer"):
        DiffusionPipeline.from_pretrained(tmp_path / "model_only")


def test_bad_input_gets_clear_errors(byte_tokenizer, word_tokenizer):
    pipe = tiny_pipe(byte_tokenizer, "absorbing")
    with pytest.raises(ValueError, match="tokenizer has 4 tokens but the model's Absorbing\\(300\\) has 300"):
        DiffusionPipeline(pipe.model, word_tokenizer)
    with pytest.raises(ValueError, match="no gap"):
        pipe.infill("no gaps here")
    with pytest.raises(ValueError, match="at least 1 token"):
        pipe.infill(["x", 0])
    with pytest.raises(TypeError, match="segments"):
        pipe.infill(["x", 2.5])
    with pytest.raises(ValueError, match=r"needs \d+ tokens \(\d+ given, 60 in gaps\) but the model's maximum length is 64"):
        pipe.infill("A template too long for the model once its gaps are counted:{{60}}")
    with pytest.raises(ValueError, match="a gap of 70 tokens exceeds the model's maximum length 64"):
        pipe.infill("A gap too long:{{70}}")
    with pytest.raises(ValueError, match="maximum length"):
        pipe.generate(1, 65)
    with pytest.raises(ValueError, match="text 1 tokenises to nothing"):
        pipe.nll_bound(["fine", ""])
    with pytest.raises(TypeError, match="list of strings"):
        pipe.nll_bound("a single string")
    with pytest.raises(ValueError, match="not both"):
        pipe.generate(1, 4, generator=torch.Generator(), seed=1)
    ar = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), objective="ar"))
    with pytest.raises(ValueError, match="autoregressive"):
        DiffusionPipeline(ar, byte_tokenizer)
    with pytest.raises(ValueError, match="graph=, noise= and max_length="):
        DiffusionPipeline(lambda x, s: x, byte_tokenizer)
