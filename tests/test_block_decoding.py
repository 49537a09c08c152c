"""Semi-autoregressive block decoding and unknown-length infill, against exact oracles."""

import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ddlm import Absorbing, DDLMConfig, LogLinear, SequenceOracle
from ddlm.cli import SEPARATOR, main
from ddlm.pipeline import DiffusionPipeline
from helpers import randomised, save_tiny_pipeline

WORDS = ["a", "b", "c", "d"]
EOS = 3  # "d"


@pytest.fixture(scope="module")
def word_tokenizer():
    """Four words, one token each, "d" doubling as the EOS token."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="d")


@pytest.fixture(scope="module")
def oracle_pipe(word_tokenizer):
    oracle = SequenceOracle.random(Absorbing(4), 3, torch.Generator().manual_seed(11))
    return oracle, DiffusionPipeline(oracle.score_fn, word_tokenizer, graph=oracle.graph, noise=LogLinear(), max_length=3)


def tiny_pipe(tokenizer, process="absorbing", length=16):
    config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), process=process, max_position_embeddings=length)
    return DiffusionPipeline(randomised(config, 0, std=0.1), tokenizer)


def test_one_block_is_plain_sampling_draw_for_draw(oracle_pipe):
    oracle, pipe = oracle_pipe
    blocks = torch.stack(pipe.sample_blocks(20_000, 3, 3, steps=16, seed=5, progress=False))
    assert torch.equal(blocks, pipe.sample(20_000, 3, steps=16, seed=5, progress=False))
    assert oracle.total_variation(blocks) < 0.04


@pytest.mark.parametrize("block_size", [1, 2])
def test_block_by_block_decoding_has_the_joint_law(oracle_pipe, block_size):
    oracle, pipe = oracle_pipe
    stats = {}
    x = torch.stack(pipe.sample_blocks(20_000, 3, block_size, steps=16, seed=block_size, progress=False, stats=stats))
    assert stats["blocks"] == -(-3 // block_size)
    assert oracle.total_variation(x) < 0.04


def test_a_prompt_gets_the_exact_conditional_continuation(oracle_pipe):
    oracle, pipe = oracle_pipe
    x = torch.stack(pipe.sample_blocks(20_000, 2, 1, steps=16, prompt_ids=[2], seed=3, progress=False))
    codes = x[:, 0] * 4 + x[:, 1]
    empirical = torch.bincount(codes, minlength=16).double() / 20_000
    joint = oracle.probs[2].reshape(-1)
    assert 0.5 * float((empirical - joint / joint.sum()).abs().sum()) < 0.04


def test_stop_at_eos_cuts_right_after_the_first_eos(oracle_pipe):
    oracle, pipe = oracle_pipe
    stats = {}
    rows = pipe.sample_blocks(2000, 3, 2, steps=8, stop_at_eos=True, seed=1, progress=False, stats=stats)
    lengths = set()
    for row in rows:
        hits = (row == EOS).nonzero().squeeze(1).tolist()
        assert hits == ([len(row) - 1] if hits else []) and (hits or len(row) == 3)
        lengths.add(len(row))
    assert lengths == {1, 2, 3}  # an EOS at the first position of a block of 2 stops there
    texts = pipe.generate(200, max_new_tokens=3, block_size=2, stop_at_eos=True, steps=8, seed=1, progress=False)
    assert all("d" not in t and len(t.split()) <= 3 for t in texts) and any(len(t.split()) < 3 for t in texts)
    # the law of the text up to its first EOS is the oracle's
    seqs = oracle.sequences
    first = [row.tolist()[: row.tolist().index(EOS) + 1] if EOS in row.tolist() else row.tolist() for row in seqs]
    exact = {}
    for prefix, p in zip(first, oracle.probs.reshape(-1).tolist()):
        exact[tuple(prefix)] = exact.get(tuple(prefix), 0) + p
    rows = pipe.sample_blocks(20_000, 3, 1, steps=16, stop_at_eos=True, seed=2, progress=False)
    counts = {}
    for row in rows:
        counts[tuple(row.tolist())] = counts.get(tuple(row.tolist()), 0) + 1
    assert set(counts) <= set(exact)
    assert 0.5 * sum(abs(counts.get(k, 0) / 20_000 - p) for k, p in exact.items()) < 0.04


def test_sliding_beyond_the_context_keeps_the_prompt_and_makes_every_token(byte_tokenizer):
    pipe = tiny_pipe(byte_tokenizer, length=16)
    prompt = "To be, or not to be"
    prompt_ids = byte_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = pipe.sample_blocks(2, 40, 4, steps=3, prompt_ids=prompt_ids, seed=0, progress=False)
    assert [len(r) for r in rows] == [40, 40] and all(int(r.max()) < 300 for r in rows)
    texts = pipe.generate(2, prompt=prompt, max_new_tokens=40, block_size=4, steps=3, seed=0, progress=False)
    assert texts == [prompt + pipe.decode(r) for r in rows]


def test_sliding_window_clamps_the_last_finished_tokens(oracle_pipe):
    oracle, pipe = oracle_pipe
    seen = []

    def recording(x, s):
        seen.append(x.clone())
        return oracle.score_fn(x, s)

    spy = DiffusionPipeline(recording, pipe.tokenizer, graph=oracle.graph, noise=LogLinear(), max_length=3)
    (row,) = spy.sample_blocks(1, 5, 1, steps=4, prompt_ids=[0, 1], seed=0, progress=False)
    assert len(row) == 5
    finished = [0, 1] + row.tolist()
    windows = {tuple(x[0, :2].tolist()) for x in seen}
    assert windows == {tuple(finished[k:k + 2]) for k in range(5)}  # each block sees the last 2 = 3 - 1 tokens


def test_time_independent_scores_reuse_the_clamped_prefix(oracle_pipe):
    oracle, _ = oracle_pipe

    def exact(x, s):  # exact absorbing ratios have the time-independent form at masked positions
        return oracle.score_fn(x, s)

    exact.time_independent = True
    pipe = DiffusionPipeline(exact, _.tokenizer, graph=oracle.graph, noise=LogLinear(), max_length=3)
    cached, uncached = {}, {}
    a = pipe.sample_blocks(500, 3, 1, steps=32, seed=4, progress=False, stats=cached)
    b = pipe.sample_blocks(500, 3, 1, steps=32, seed=4, progress=False, stats=uncached, cache=False)
    assert cached["cache"] and not uncached["cache"]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert cached["network_calls"] < uncached["network_calls"] // 2


def test_uniform_models_and_bad_block_arguments_are_refused(byte_tokenizer):
    with pytest.raises(ValueError, match="block_size: block decoding .* needs an absorbing model"):
        tiny_pipe(byte_tokenizer, "uniform").generate(block_size=4, max_new_tokens=8, steps=2, progress=False)
    pipe = tiny_pipe(byte_tokenizer, length=16)
    for kwargs, message in [
        (dict(block_size=0), r"block_size must be an int in \[1, 16\]"),
        (dict(block_size=17), r"block_size must be an int in \[1, 16\]"),
        (dict(block_size=4, max_new_tokens=0), "max_new_tokens must be an int >= 1"),
        (dict(block_size=4, length=8, max_new_tokens=8), "not both"),
        (dict(block_size=4, denoise=False), "denoise must be True"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipe.generate(1, steps=2, progress=False, **kwargs)


# ---------------------------------------------------------------------- unknown-length infill
class LengthOracles:
    """Exact ratios for sequences of 3, 4 or 5 words; at length 4 "a ? ? d" holds most of the mass."""

    def __init__(self):
        graph = Absorbing(4)
        self.oracles = {}
        for length in (3, 4, 5):
            weights = torch.ones(4**length, dtype=torch.float64)
            if length == 4:
                seqs = SequenceOracle(graph, weights, 4).sequences
                weights[(seqs[:, 0] == 0) & (seqs[:, -1] == 3)] = 1000.0
            self.oracles[length] = SequenceOracle(graph, weights, length)

    def __call__(self, x, s):
        return self.oracles[x.shape[1]].score_fn(x, s)


def test_unknown_length_infill_picks_the_likely_length_and_reports_every_candidate(word_tokenizer):
    pipe = DiffusionPipeline(LengthOracles(), word_tokenizer, graph=Absorbing(4), noise=LogLinear(), max_length=5)
    texts, candidates = pipe.infill("a{{1..3}}d", num_samples=2, steps=8, num_t=64, seed=0, progress=False,
                                    return_candidates=True)
    assert [c.lengths for c in candidates] == [(1,), (2,), (3,)]
    assert [c.num_tokens for c in candidates] == [3, 4, 5]
    best = min(candidates, key=lambda c: c.per_token)
    assert best.lengths == (2,) and texts == best.texts and len(texts) == 2
    for c in candidates:
        assert len(c.texts) == 2 and all(t.startswith("a") and t.endswith("d") and len(t.replace(" ", "")) == c.num_tokens for t in c.texts)
        assert c.per_token_stderr >= 0 and c.per_token == pytest.approx(c.bound / c.num_tokens)
    assert best.per_token + 3 * best.per_token_stderr < min(c.per_token for c in candidates if c is not best)
    assert len(pipe.gap_length_candidates("{{1..2}}a{{1..2}}")) == 4


def test_unknown_length_gaps_with_bad_ranges_are_named(word_tokenizer, byte_tokenizer):
    pipe = DiffusionPipeline(LengthOracles(), word_tokenizer, graph=Absorbing(4), noise=LogLinear(), max_length=5)
    for template, message in [
        ("a{{3..1}}d", "gap 1 {{3..1}}: min 3 > max 1; allowed: 1 <= min <= max <= 5"),
        ("a{{2}}b{{0..2}}d", "gap 2 {{0..2}}: min 0 < 1"),
        ("a{{1..9}}d", "gap 1 {{1..9}}: max 9 exceeds the model's maximum length"),
        ("a{{1..4}}d", "gap 1 {{1..4}}: max 4 does not fit.*allowed: 1 <= min <= max <= 3"),
        ("a{{1.5..2}}d", "a gap {{1.5..2}} must hold a positive int"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message) if ".*" not in message else message.replace("{", r"\{")):
            pipe.infill(template, steps=2, progress=False)
    big = tiny_pipe(byte_tokenizer, length=64)
    with pytest.raises(ValueError, match="gap ranges make 81 combinations .* at most 64"):
        big.infill("{{1..9}} and {{1..9}}", steps=2, progress=False)
    with pytest.raises(ValueError, match="unknown length"):
        big.encode_template("x{{1..3}}")


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 32)


def test_cli_sample_continues_a_prompt_block_by_block(model_dir, capsys):
    main(["sample", str(model_dir), "--prompt", "To be", "--block-size", "8", "--max-new-tokens", "40", "--stop-at-eos",
          "--num-samples", "2", "--steps", "3", "--quiet"])
    texts = capsys.readouterr().out[:-1].split(f"\n{SEPARATOR}\n")
    assert len(texts) == 2 and all(t.startswith("To be") and "<|endoftext|>" not in t for t in texts)


def test_cli_infill_prints_the_chosen_fill_and_the_candidates(model_dir, capsys):
    main(["infill", str(model_dir), "The cat{{2..6}} on the mat.", "--num-t", "8", "--steps", "3", "--quiet"])
    out = capsys.readouterr().out
    assert out.startswith("The cat") and "chosen gap lengths" in out
    rows = [line for line in out.splitlines() if re.match(r"^[* ] +[2-6] +\d+ +\d+\.\d{4} \+- \d+\.\d{4}", line)]
    assert len(rows) == 5 and sum(line.startswith("*") for line in rows) == 1


@pytest.mark.parametrize("argv, message", [
    (["--block-size", "0"], "--block-size: expected a positive integer"),
    (["--max-new-tokens", "x"], "--max-new-tokens: expected a positive integer"),
])
def test_cli_block_options_are_checked_by_argparse(model_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        main(["sample", str(model_dir), *argv])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_cli_help_lists_the_block_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    for option in ["--block-size", "--max-new-tokens", "--stop-at-eos", "--prompt"]:
        assert option in out
    assert out.count("default") >= 4
