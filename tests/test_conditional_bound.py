"""The conditional bound -log p(continuation | context), the dataset-level estimator and conditional scores,
against exact answers: an enumerated oracle's conditionals, the clamped reverse process solved exactly, and
the AR chain rule computed token by token."""

import itertools
import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import ddlm
import ddlm.evaluation.scoring
from ddlm import DDLMConfig, LogLinear, SequenceOracle
from ddlm.cli import main
from ddlm.evaluation import ar_conditional_scores, default_batch_size, encode_pair, lambada, split_last_word
from ddlm.likelihood import block_estimates, conditional_nll_bound, nll_bound, pooled_times
from ddlm.losses import dse
from ddlm.pipeline import DiffusionPipeline
from helpers import OracleModel, conditional_oracle, randomised

WORDS = ["a", "b", "c"]


def word_tokenizer(words, eos=None):
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **({"eos_token": eos} if eos else {}))


def oracle_of(graph, seed=0):
    return SequenceOracle.random(graph, 3, torch.Generator().manual_seed(seed))


def data_nll(oracle, x0, fixed):
    """Exact -log p(x0[free] | x0[fixed]) per row of x0 [B, 3]."""
    return torch.tensor([-float(conditional_oracle(oracle, row, f.nonzero().squeeze(1).tolist()).log_prob(row))
                         for row, f in zip(x0, fixed)], dtype=torch.float64)


def free_configurations(graph, x0, free):
    """Every noised sequence that is x0 at the fixed positions, Long[S^k, L], and the free positions."""
    positions = free.nonzero().squeeze(1)
    configs = torch.tensor(list(itertools.product(range(graph.num_states), repeat=len(positions))))
    x = x0.repeat(len(configs), 1)
    x[:, positions] = configs
    return x, positions


def clamped_process_nll(oracle, noise, x0, free, steps=200):
    """-log of the probability that the clamped reverse process (exact ratios on the clamped sequence, default
    base) ends at x0: its Kolmogorov equation solved with matrix exponentials on a log grid of sigma_bar."""
    graph = oracle.graph
    x, positions = free_configurations(graph, x0, free)
    top = float(noise.total(1.0))
    grid = torch.cat([torch.logspace(math.log10(top), -9, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    p = graph.prior(torch.tensor(top))[x[:, positions]].prod(1)
    mids = (grid[:-1] + grid[1:]) / 2
    log_s = oracle.score_fn(x.repeat(len(mids), 1), mids.repeat_interleave(len(x))).reshape(len(mids), len(x), 3, -1)
    differ = x[:, None, :] != x[None, :, :]
    z, y = (differ.sum(-1) == 1).nonzero(as_tuple=True)
    i = differ.float().argmax(-1)[z, y]
    q = graph.rate_matrix()
    for k in range(len(mids)):
        rates = torch.zeros(len(x), len(x), dtype=torch.float64)
        rates[z, y] = q[x[y, i], x[z, i]] * torch.exp(log_s[k, z, i, x[y, i]])
        p = p @ torch.matrix_exp((rates - torch.diag(rates.sum(1))) * (grid[k] - grid[k + 1]))
    return -math.log(float(p[(x == x0).all(1)]))


def exact_bound(oracle, noise, x0, free, points=1000):
    """The conditional bound's formula evaluated exactly: E over x_t by enumeration, the t integral by the
    midpoint rule in u (t = u^2), plus the default base's prior term."""
    graph = oracle.graph
    x, positions = free_configurations(graph, x0, free)
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    sigma_bar = noise.total(u**2).repeat_interleave(len(x))
    xs = x.repeat(points, 1)
    terms = dse(oracle.score_fn(xs, sigma_bar), xs, x0.expand_as(xs), sigma_bar[:, None], graph)[:, positions].sum(1)
    prob = graph.transition_prob(x0.expand_as(xs), xs, sigma_bar[:, None])[:, positions].prod(1)
    integrand = (prob * terms).reshape(points, len(x)).sum(1) * noise.rate(u**2) * 2 * u
    return float(integrand.mean()) + float(graph.prior_kl(noise.total(1.0))) * len(positions)


def test_absorbing_conditional_bound_is_the_conditional_nll_with_the_exact_terminal_base():
    graph, noise = ddlm.Absorbing(3), LogLinear()
    oracle = oracle_of(graph, seed=1)
    x0 = oracle.sequences[torch.tensor([2, 7, 15, 22])]
    fixed = torch.tensor([[True, False, False], [True, True, False], [False, True, False], [False, False, True]])  # prefix, suffix, middle
    top = float(noise.total(1.0))
    for i in range(4):  # one row at a time, so the base knows the row's context
        context = fixed[i].nonzero().squeeze(1).tolist()

        given = conditional_oracle(oracle, x0[i], context)  # x_T keeps x0[i]'s context: it is clamped

        def exact_base(x_T, given=given, context=context):  # log p_1(x_T[free] | context): the conditional's terminal marginal
            return given.log_marginal(x_T, top) + top * len(context)

        r = conditional_nll_bound(oracle.score_fn, graph, noise, x0[i:i + 1], fixed[i:i + 1], num_t=2048,
                                  generator=torch.Generator().manual_seed(i), batch_size=2048, base=exact_base)
        true = float(data_nll(oracle, x0[i:i + 1], fixed[i:i + 1]))
        assert abs(float(r.bound[0]) - true) <= 3 * float(r.stderr[0])
        assert float(r.stderr[0]) < 0.1 * true and int(r.num_tokens[0]) == int((~fixed[i]).sum())
    default = conditional_nll_bound(oracle.score_fn, graph, noise, x0, fixed, num_t=2048, generator=torch.Generator().manual_seed(9),
                                    batch_size=4 * 2048)
    assert bool((default.bound + 3 * default.stderr >= data_nll(oracle, x0, fixed)).all())
    assert torch.allclose(default.prior, graph.prior_kl(noise.total(1.0)) * (~fixed).sum(1))
    assert torch.allclose(default.ppl, torch.exp(default.bound / (~fixed).sum(1)))


@pytest.mark.parametrize("graph", [ddlm.Absorbing(3), ddlm.Uniform(3)], ids=repr)
def test_conditional_bound_estimates_its_formula_which_bounds_the_clamped_reverse_process(graph):
    """The Monte Carlo estimate agrees with the formula evaluated exactly; the formula is >= -log of the
    clamped reverse process's probability (solved exactly). Absorbing: that process is the data's
    conditional; uniform: it is not, as the docstring says."""
    noise = LogLinear()
    oracle = oracle_of(graph)
    x0, free = torch.tensor([1, 2, 0]), torch.tensor([False, True, True])
    exact = exact_bound(oracle, noise, x0, free)
    process = clamped_process_nll(oracle, noise, x0, free)
    data = float(data_nll(oracle, x0[None], ~free[None]))
    mc = conditional_nll_bound(oracle.score_fn, graph, noise, x0[None], ~free[None], num_t=2048, generator=torch.Generator().manual_seed(2),
                               batch_size=2048)
    assert abs(float(mc.bound[0]) - exact) <= 3 * float(mc.stderr[0])
    assert exact >= process - 1e-6
    if graph.mask_id is not None:
        assert process == pytest.approx(data, abs=2e-3)  # the default base leaks e^-sigma_bar(1) of mass off the mask
        assert exact == pytest.approx(data, abs=2e-3)
    else:
        assert abs(process - data) > 0.05  # clamping a uniform model is not conditioning on clean context


def test_conditional_bound_without_context_is_the_unconditional_bound():
    graph, noise = ddlm.Uniform(3), LogLinear()
    oracle = oracle_of(graph)
    x0 = oracle.sequences[torch.tensor([0, 5, 13])]
    plain = nll_bound(oracle.score_fn, graph, noise, x0, 16, torch.Generator().manual_seed(1))
    free = conditional_nll_bound(oracle.score_fn, graph, noise, x0, torch.zeros(3, dtype=torch.bool), 16, torch.Generator().manual_seed(1))
    assert torch.allclose(plain.bound, free.bound) and torch.allclose(plain.stderr, free.stderr)


def test_dataset_estimator_agrees_with_the_per_text_one_and_its_error_is_honest():
    graph, noise = ddlm.Absorbing(3), LogLinear()
    oracle = oracle_of(graph, seed=3)
    blocks = oracle.sample(64, torch.Generator().manual_seed(4))
    true_total = -float(oracle.log_prob(blocks).sum())
    top = float(noise.total(1.0))
    exact_base = lambda x_T: oracle.log_marginal(x_T, top)
    per_text = nll_bound(oracle.score_fn, graph, noise, blocks, 128, torch.Generator().manual_seed(5), batch_size=64 * 128)
    per_total, per_se = float(per_text.bound.sum()), float(per_text.stderr.square().sum().sqrt())
    totals, errors = [], []
    for seed in range(60):
        estimate = block_estimates(oracle.score_fn, graph, noise, list(blocks), 1, torch.Generator().manual_seed(100 + seed), base=exact_base)
        total, stderr = estimate.total()
        totals.append(total)
        errors.append(stderr)
    totals, errors = torch.tensor(totals), torch.tensor(errors)
    assert abs(float(totals[0]) - per_total) <= 3 * math.hypot(float(errors[0]), per_se)
    assert abs(float(totals.mean()) - true_total) <= 3 * float(totals.std()) / math.sqrt(len(totals))  # unbiased
    assert 0.7 < float(errors.mean() / totals.std()) < 1.4  # the reported error is about the actual spread
    assert float(estimate.num_tokens.sum()) == 64 * 3 and estimate.t_per_block == 1


def test_pooled_times_cover_the_unit_interval_two_slots_per_stratum():
    t, weight, block, stratum = pooled_times(10, 3, "stratified", 2.0, torch.Generator().manual_seed(0))
    u = t.sqrt()
    assert len(t) == 30 and torch.equal(torch.floor(u * 15).long(), stratum)
    assert torch.equal(stratum.sort().values, torch.arange(15).repeat_interleave(2))
    assert torch.equal(block, torch.arange(10).repeat_interleave(3)) and torch.allclose(weight, 2 * u)
    _, _, block, stratum = pooled_times(3, 1, "stratified", 2.0, torch.Generator().manual_seed(0))  # odd: one block gets 2
    assert torch.equal(torch.bincount(block).sort().values, torch.tensor([1, 1, 2])) and len(stratum) == 4
    t, _, block, stratum = pooled_times(4, 2, "antithetic", 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(t[0::2] + t[1::2], torch.ones(4, dtype=torch.float64)) and stratum is None
    with pytest.raises(ValueError, match="even t_per_block"):
        pooled_times(4, 3, "antithetic")


@pytest.fixture(scope="module")
def oracle_pipe():
    oracle = oracle_of(ddlm.Absorbing(3), seed=6)
    return oracle, DiffusionPipeline(oracle.score_fn, word_tokenizer(WORDS), graph=oracle.graph, noise=LogLinear(), max_length=3)


def test_pipeline_conditional_nll_is_the_core_bound_and_greedy_reads_the_conditional_argmax(oracle_pipe):
    oracle, pipe = oracle_pipe
    pairs = [("a b", " c"), ("b", " a c"), ("", "c c a")]
    scores = pipe.conditional_nll([c for c, _ in pairs], [w for _, w in pairs], num_t=64, seed=3)
    x0 = [[0, 1, 2], [1, 0, 2], [2, 2, 0]]
    contexts = [2, 1, 0]
    gen = torch.Generator().manual_seed(3)
    for i, (score, ids, k) in enumerate(zip(scores, x0, contexts)):  # groups by length: all three are one group here
        assert score.tokens == 3 - k and score.num_t == 64
    x = torch.tensor(x0)
    fixed = torch.arange(3)[None, :] < torch.tensor(contexts)[:, None]
    core = conditional_nll_bound(oracle.score_fn, oracle.graph, LogLinear(), x, fixed, 64, gen, batch_size=pipe_batch(pipe))
    assert [s.nll for s in scores] == pytest.approx(core.bound.tolist(), abs=1e-9)
    assert [s.stderr for s in scores] == pytest.approx(core.stderr.tolist(), abs=1e-9)
    for score, row, k in zip(scores, x, contexts):  # greedy: each free position's conditional mode given the context
        given = conditional_oracle(oracle, row, list(range(k))).probs
        modes = [int(given.sum(tuple(j for j in range(3) if j != i)).argmax()) for i in range(k, 3)]
        assert score.greedy == (modes == row[k:].tolist())


def pipe_batch(pipe):
    return ddlm.evaluation.model_batch_size(pipe.model, 3, pipe.device, pipe.graph.num_states)


def test_lambada_splits_the_last_word_and_scores_it(oracle_pipe):
    oracle, pipe = oracle_pipe
    assert split_last_word("a b  c ") == ("a b ", " c")
    texts = ["a b c", "b a c", "c c a", "a a a"]
    result = lambada(pipe, texts, num_t=32, seed=1)
    scores = pipe.conditional_nll([t.rsplit(" ", 1)[0] for t in texts], [" " + t.rsplit(" ", 1)[1] for t in texts], 32, seed=1)
    assert result["accuracy"] == sum(s.greedy for s in scores) / 4
    assert result["ppl"] == pytest.approx(math.exp(sum(s.nll for s in scores) / 4))
    assert result["num_examples"] == 4 and result["tokens"] == 4 and not result["exact"]
    with pytest.raises(ValueError, match="separated by a space"):
        lambada(pipe, ["abc"])


@pytest.fixture(scope="module")
def ar_model():
    tokenizer = word_tokenizer(WORDS + ["<eos>"], eos="<eos>")
    config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=8, objective="ar")
    return randomised(config, seed=3, std=0.3), tokenizer


def test_ar_conditional_nll_is_the_chain_rule(ar_model):
    model, tokenizer = ar_model
    contexts, continuations = ["a b", "", "c c c a"], [" c a", "b", " a b c"]
    scores = ar_conditional_scores(model, tokenizer, contexts, continuations)
    eos = tokenizer.eos_token_id
    for score, context, continuation in zip(scores, contexts, continuations):
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        nll, greedy = 0.0, True
        with torch.no_grad():
            for k, token in enumerate(cont):  # one prefix at a time
                prefix = torch.tensor([[eos] + ctx + cont[:k]])
                logits = model(prefix)[0, -1].double()
                log_p = torch.log_softmax(logits, -1)
                nll -= float(log_p[token])
                greedy &= int(log_p.argmax()) == token
        assert score.nll == pytest.approx(nll, abs=1e-5) and score.stderr == 0 and score.exact
        assert score.tokens == len(cont) and score.greedy == greedy
    assert ddlm.evaluation.score_continuations(model, tokenizer, contexts, continuations) == scores
    assert lambada((model, tokenizer), ["a b c", "c a a"])["stderr"] == 0


def test_pairs_are_split_as_lm_eval_does_and_bad_pairs_are_refused(oracle_pipe, ar_model):
    _, pipe = oracle_pipe
    tokenizer = pipe.tokenizer
    assert encode_pair(tokenizer, "a b ", "c") == ([0, 1], [2])  # the trailing space moves to the continuation
    with pytest.raises(ValueError, match="continuation 1 is empty"):
        pipe.conditional_nll(["a", "a"], [" b", ""])
    with pytest.raises(ValueError, match="context 0 .*need 4 tokens but the model's maximum length is 3.*truncate_context"):
        pipe.conditional_nll(["a b c"], [" a"])
    assert pipe.conditional_nll(["a b c"], [" a"], 8, truncate_context=True)[0].tokens == 1
    with pytest.raises(ValueError, match="continuation 0 has 4 tokens, more than"):
        pipe.conditional_nll([""], ["a b c a"], truncate_context=True)
    with pytest.raises(ValueError, match="2 contexts but 1 continuations"):
        pipe.conditional_nll(["a", "b"], [" c"])
    with pytest.raises(TypeError, match="lists of strings"):
        pipe.conditional_nll("a", " b")
    with pytest.raises(ValueError, match="context 0 .*maximum length is 8"):
        ar_conditional_scores(*ar_model, ["a " * 8], [" b"])
    oracle = pipe.model.__self__
    x0 = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="no free position in row 0"):
        conditional_nll_bound(oracle.score_fn, oracle.graph, LogLinear(), x0, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="fixed must be a Bool tensor"):
        conditional_nll_bound(oracle.score_fn, oracle.graph, LogLinear(), x0, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="fixed must have the shape of x0"):
        conditional_nll_bound(oracle.score_fn, oracle.graph, LogLinear(), x0, torch.zeros(2, 3, dtype=torch.bool))


def test_pipeline_estimators_and_their_costs(oracle_pipe):
    _, pipe = oracle_pipe
    text = " ".join(["a b c", "b b a", "c a b", "a a c"] * 5)  # 20 blocks of 3
    per_text, dataset = pipe.nll_bound([text], 8, progress=False)[0], pipe.nll_bound([text], estimator="dataset", progress=False)[0]
    auto = pipe.nll_bound([text, "a b c"], estimator="auto", progress=False)
    assert (per_text.estimator, per_text.num_t, per_text.model_calls) == ("per-text", 8, 160)
    assert (dataset.estimator, dataset.num_t, dataset.model_calls, dataset.calls_per_token) == ("dataset", 1, 20, 20 / 60)
    assert [r.estimator for r in auto] == ["dataset", "per-text"] and auto[1].num_t == 128
    assert abs(dataset.bound - per_text.bound) <= 3 * math.hypot(dataset.stderr, per_text.stderr)
    with pytest.raises(ValueError, match="text 0 is one block"):
        pipe.nll_bound(["a b c"], estimator="dataset")
    with pytest.raises(ValueError, match="estimator must be one of"):
        pipe.nll_bound([text], estimator="mc")


def test_default_batch_size_follows_memory_vocabulary_and_length():
    small = default_batch_size(1025, 128, hidden_size=128, num_heads=4, memory=2**32)
    assert small == default_batch_size(1025, 128, hidden_size=128, num_heads=4, memory=2**34)  # CPU work capped at 512 MiB
    assert default_batch_size(1025, 128, hidden_size=128, num_heads=4, memory=2**30) == small // 2
    assert default_batch_size(50258, 1024, hidden_size=768, num_heads=12, memory=2**34) < small
    assert default_batch_size(50258, 1024, hidden_size=768, num_heads=12, memory=2**20) == 1
    per_sequence = 128 * (16 * 1025 + 64 * 128) + 8 * 4 * 128**2
    assert small == int(2**29 // per_sequence)



def test_cli_prints_conditional_bounds_and_refuses_bad_pairs_in_one_line(oracle_pipe, ar_model, tmp_path, monkeypatch, capsys):
    oracle, pipe = oracle_pipe
    models_by_name = {"oracle": (OracleModel(oracle), pipe.tokenizer), "ar": ar_model}
    monkeypatch.setattr(ddlm.evaluation.scoring, "load_model", lambda path, **kwargs: models_by_name[str(path)])
    main(["eval", "oracle", "--context", "a b", "--continuation", " c", "--num-t", "64", "--seed", "3", "--quiet"])
    row = capsys.readouterr().out.splitlines()[1].split()
    core = pipe.conditional_nll(["a b"], [" c"], 64, seed=3)[0]
    assert row[:3] == ["#1", "0", "1"] and float(row[3]) == pytest.approx(core.nll, abs=1e-3)
    assert float(row[5]) == pytest.approx(core.stderr, abs=1e-3)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"context": c, "continuation": w}) for c, w in [("a", " b c"), ("c b", " a")]) + "\n")
    main(["eval", "oracle", "--conditional", str(pairs), "--compare", "ar", "--num-t", "8", "--quiet"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("#")]
    assert [r[:2] for r in rows] == [["#1", "0"], ["#1", "1"], ["#1", "all"], ["#2", "0"], ["#2", "1"], ["#2", "all"]]
    assert float(rows[3][5]) == 0 and "AR: exact" in out
    bad = tmp_path / "bad.jsonl"
    for content, message in [('{"context": "a"}\n', "line 1 must be an object"), ("not json\n", "line 1 is not JSON"),
                             ("\n", "holds no pairs")]:
        bad.write_text(content)
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "oracle", "--conditional", str(bad), "--quiet"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    for argv, message in [(["--context", "a b c", "--continuation", " a"], "maximum length is 3"),
                          (["--context", "a", "--continuation", ""], "continuation 0 is empty"),
                          (["--context", "a"], "--context needs --continuation"),
                          (["--conditional", str(pairs), "--context", "a"], "not both")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "oracle", *argv, "--quiet"])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1
        assert captured.out == ""


def test_cli_eval_picks_the_dataset_estimator_for_long_files(oracle_pipe, tmp_path, monkeypatch, capsys):
    oracle, pipe = oracle_pipe
    monkeypatch.setattr(ddlm.evaluation.scoring, "load_model", lambda path, **kwargs: (OracleModel(oracle), pipe.tokenizer))
    (tmp_path / "long.txt").write_text(" ".join(["a b c", "c a b"] * 10))  # 20 blocks of 3
    (tmp_path / "short.txt").write_text("a b c c a b")  # 2 blocks
    main(["eval", "oracle", str(tmp_path / "long.txt"), str(tmp_path / "short.txt"), "--quiet"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("#1 ")][::2]  # the estimate rows
    assert [(r[4], r[3], float(r[5])) for r in rows] == [("dataset", "1", pytest.approx(1 / 3, abs=1e-4)), ("per-text", "128", pytest.approx(128 / 3, abs=1e-4))]
