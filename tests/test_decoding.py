"""Decoding strategies (temperature / top-k / top-p, confidence-based unmasking) against exact oracles.

The measured numbers below are for ``SequenceOracle.random(Absorbing(3), 3, seed 11)``.
"""

import math

import pytest
import torch

import ddlm
from ddlm.decoding import shape_log_weights
from ddlm.sampling import sample
from helpers import save_tiny_pipeline

NUM = 50_000
STEP_PREDICTORS = ["analytic", "euler", "tau_leaping", "first_hitting"]


def _setup(seed=11):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    gen = torch.Generator().manual_seed(seed)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    exact_tv = oracle.total_variation(oracle.sample(NUM, gen))
    return graph, noise, oracle, exact_tv


def _run(oracle, graph, noise, steps, predictor, seed=1, num=NUM, **kwargs):
    return sample(oracle.score_fn, graph, noise, (num, 3), steps, predictor, generator=torch.Generator().manual_seed(seed),
                  progress=False, **kwargs)


@pytest.mark.parametrize("confidence", ["random", "max_prob", "margin", "entropy"])
def test_one_position_per_step_with_exact_conditionals_is_exact(confidence):
    """k = 1 per step, steps = L: sequential sampling in an order chosen from revealed tokens is exact."""
    graph, noise, oracle, exact_tv = _setup()
    stats = {}
    x = _run(oracle, graph, noise, 3, "confidence", confidence=confidence, stats=stats)
    assert x.shape == (NUM, 3) and int(x.max()) < graph.num_tokens
    assert oracle.total_variation(x) <= exact_tv + 0.01
    assert stats["network_calls"] == 3


def test_confidence_of_the_drawn_token_is_biased_even_one_at_a_time():
    """confidence="prob" (LLaDA low-confidence remasking) picks positions by their drawn token: biased.

    Measured: TV 0.32 to the data distribution (50k exact draws: 0.011).
    """
    graph, noise, oracle, exact_tv = _setup()
    tv = oracle.total_variation(_run(oracle, graph, noise, 3, "confidence", confidence="prob"))
    assert 0.25 < tv < 0.40


def _product_of_marginals(oracle):
    p = oracle.probs
    m = [p.sum((1, 2)), p.sum((0, 2)), p.sum((0, 1))]
    return m[0][:, None, None] * m[1][None, :, None] * m[2][None, None, :]


@pytest.mark.parametrize("options", [dict(confidence="max_prob"), dict(confidence="random"), dict(threshold=0.0),
                                     dict(entropy_bound=100.0)], ids=str)
def test_everything_in_one_step_draws_the_product_of_marginals(options):
    """k = L in one step: independent per-position draws, a known biased case.

    The product of the marginals is at TV 0.308 from the data distribution (exact, this oracle);
    the samples match the product, not the data.
    """
    graph, noise, oracle, exact_tv = _setup()
    stats = {}
    x = _run(oracle, graph, noise, 1, "confidence", stats=stats, **options)
    assert stats["network_calls"] == 1
    product = ddlm.SequenceOracle(graph, _product_of_marginals(oracle), 3)
    product_tv = 0.5 * float((product.probs - oracle.probs).abs().sum())
    assert product_tv == pytest.approx(0.3078, abs=1e-4)
    assert product.total_variation(x) <= exact_tv + 0.01
    assert abs(oracle.total_variation(x) - product_tv) <= exact_tv + 0.01


def test_threshold_and_entropy_bound_unmask_at_least_one_per_step():
    graph, noise, oracle, exact_tv = _setup()
    for options in (dict(threshold=0.999), dict(entropy_bound=0.0)):
        stats = {}
        x = _run(oracle, graph, noise, 1, "confidence", stats=stats, **options)  # steps unused
        assert stats["network_calls"] == 3  # one per step, L steps
        assert oracle.total_variation(x) <= exact_tv + 0.01  # one at a time in max_prob order: exact


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_schedules_end_with_no_masks_and_skip_empty_steps(schedule, steps):
    graph, noise, oracle, _ = _setup()
    stats = {}
    x = _run(oracle, graph, noise, steps, "confidence", num=500, unmask_schedule=schedule, stats=stats)
    assert int(x.max()) < graph.num_tokens
    assert stats["network_calls"] == min(steps, 3)  # steps that unmask nothing call no network


def test_confidence_keeps_clamped_positions_and_gives_the_conditional():
    graph, noise, oracle, _ = _setup(12)
    tokens = torch.tensor([1, 0, 2])
    conditional = ddlm.SequenceOracle(graph, oracle.probs * (torch.arange(3) == 1)[:, None, None], 3)
    num = 20_000
    fixed = torch.zeros(num, 3, dtype=torch.bool)
    fixed[:, 0] = True
    x_init = tokens.expand(num, 3).clone()
    x = _run(oracle, graph, noise, 2, "confidence", num=num, confidence="random", x_init=x_init, fixed=fixed)
    assert torch.equal(x[:, 0], x_init[:, 0])
    exact_tv = conditional.total_variation(conditional.sample(num, torch.Generator().manual_seed(3)))
    assert conditional.total_variation(x) <= exact_tv + 0.01


@pytest.mark.parametrize("predictor", STEP_PREDICTORS + ["confidence"])
def test_defaults_and_no_op_settings_reproduce_the_plain_draw(predictor):
    graph, noise, oracle, _ = _setup()
    plain = _run(oracle, graph, noise, 16, predictor, num=4000)
    same = _run(oracle, graph, noise, 16, predictor, num=4000, temperature=1.0, top_k=graph.num_tokens, top_p=1.0)
    assert torch.equal(plain, same)
    assert torch.equal(plain, _run(oracle, graph, noise, 16, predictor, num=4000, temperature=1, top_k=50, top_p=1))


@pytest.mark.parametrize("predictor", STEP_PREDICTORS + ["confidence"])
def test_temperature_zero_is_top_k_one_is_greedy(predictor):
    graph, noise, oracle, _ = _setup()
    greedy = _run(oracle, graph, noise, 16, predictor, num=4000, temperature=0)
    assert torch.equal(greedy, _run(oracle, graph, noise, 16, predictor, num=4000, top_k=1))
    assert torch.equal(greedy, _run(oracle, graph, noise, 16, predictor, num=4000, top_k=1, temperature=0.3, top_p=0.5))


def test_greedy_in_one_step_is_the_argmax_of_each_marginal():
    graph, noise, oracle, _ = _setup()
    x = _run(oracle, graph, noise, 1, "confidence", num=10, temperature=0)
    p = oracle.probs
    argmax = torch.stack([p.sum((1, 2)).argmax(), p.sum((0, 2)).argmax(), p.sum((0, 1)).argmax()])
    assert torch.equal(x, argmax.expand(10, 3))


def _reshaped(p: torch.Tensor, temperature: float, top_k, top_p: float) -> torch.Tensor:
    """The reshaped law, written out one token at a time."""
    q = [float(v) ** (1 / temperature) for v in p]
    order = sorted(range(len(q)), key=lambda i: -q[i])
    keep = set(order[: top_k or len(q)])
    q = [v if i in keep else 0.0 for i, v in enumerate(q)]
    total, mass, nucleus = sum(q), 0.0, set()
    for i in sorted(range(len(q)), key=lambda i: -q[i]):
        if mass < top_p * total:
            nucleus.add(i)
        mass += q[i]
    q = [v if i in nucleus else 0.0 for i, v in enumerate(q)]
    return torch.tensor(q, dtype=torch.float64) / sum(q)


@pytest.mark.parametrize("predictor", ["analytic", "tau_leaping", "first_hitting", "confidence"])
@pytest.mark.parametrize("options", [dict(temperature=0.5), dict(temperature=2.0), dict(top_k=2), dict(top_p=0.7),
                                     dict(temperature=0.7, top_k=3, top_p=0.9)], ids=str)
def test_reshaped_draws_follow_the_reshaped_law(predictor, options):
    """One position (L = 1): the sample's law is exactly the reshaped p(x0)."""
    graph, noise = ddlm.Absorbing(5), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle(graph, torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05]), 1)
    full = dict(temperature=1.0, top_k=None, top_p=1.0) | options
    target = ddlm.SequenceOracle(graph, _reshaped(oracle.probs, **full), 1)
    x = sample(oracle.score_fn, graph, noise, (NUM, 1), 32, predictor, generator=torch.Generator().manual_seed(5),
               progress=False, **options)
    exact_tv = target.total_variation(target.sample(NUM, torch.Generator().manual_seed(6)))
    assert target.total_variation(x) <= exact_tv + 0.01


def test_reshaping_keeps_when_positions_unmask():
    """The move/stay coin is untouched: without the final denoise the masks left are the same, draw for draw."""
    graph, noise, oracle, _ = _setup()
    for predictor in ["analytic", "euler", "tau_leaping", "first_hitting"]:
        plain = _run(oracle, graph, noise, 8, predictor, num=4000, denoise=False)
        sharp = _run(oracle, graph, noise, 8, predictor, num=4000, denoise=False, temperature=0.5, top_p=0.8)
        assert torch.equal(plain == graph.mask_id, sharp == graph.mask_id)
        assert not torch.equal(plain, sharp)


def test_shape_log_weights_keeps_the_largest_and_excluded_entries():
    log_w = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64))
    assert torch.equal(shape_log_weights(log_w, top_p=0.1) > 0, torch.tensor([[True, False, False, False]]))
    assert torch.equal(shape_log_weights(log_w, top_p=0.6) > 0, torch.tensor([[True, True, False, False]]))
    assert torch.equal(shape_log_weights(log_w, top_k=4) > 0, torch.tensor([[True, True, True, False]]))
    assert torch.equal(shape_log_weights(log_w, temperature=0), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64))


BAD = [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=math.nan), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.0), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(predictor="confidence", confidence="best"), "confidence must be one of"),
    (dict(predictor="confidence", unmask_schedule="cubic"), "unmask_schedule must be one of"),
    (dict(predictor="confidence", threshold=1.0), "threshold"),
    (dict(predictor="confidence", threshold=-0.5), "threshold"),
    (dict(predictor="confidence", threshold=0.5, confidence="entropy"), "threshold compares a probability"),
    (dict(predictor="confidence", entropy_bound=-1.0), "entropy_bound"),
    (dict(predictor="confidence", entropy_bound=math.inf), "entropy_bound"),
    (dict(predictor="confidence", entropy_bound=1.0, threshold=0.5), "not both"),
    (dict(predictor="confidence", unmask_schedule="linear", threshold=0.5), "unmask_schedule"),
    (dict(predictor="confidence", steps=0), "steps"),
    (dict(predictor="confidence", denoise=False), "denoise"),
    (dict(predictor="analytic", threshold=0.5), "predictor='confidence'"),
    (dict(predictor="analytic", confidence="max_prob"), "predictor='confidence'"),
    (dict(predictor="analytic", temperature=0.5, impl="reference"), "reference"),
]


@pytest.mark.parametrize("options,match", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_decoding_options_are_refused(options, match):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 2, torch.Generator().manual_seed(0))
    options = dict(predictor="analytic", steps=4) | options
    with pytest.raises(ValueError, match=match):
        sample(oracle.score_fn, graph, noise, (2, 2), options.pop("steps"), options.pop("predictor"), progress=False, **options)


@pytest.mark.parametrize("options", [dict(predictor="confidence"), dict(top_k=2), dict(top_p=0.9), dict(temperature=0.5)], ids=str)
def test_uniform_models_refuse_decoding_strategies(options):
    graph, noise = ddlm.Uniform(3), ddlm.Geometric()
    oracle = ddlm.SequenceOracle.random(graph, 2, torch.Generator().manual_seed(0))
    options = dict(predictor="analytic") | options
    with pytest.raises(ValueError, match="absorbing"):
        sample(oracle.score_fn, graph, noise, (2, 2), 4, options.pop("predictor"), progress=False, **options)
    # no-op settings are fine on a uniform model
    sample(oracle.score_fn, graph, noise, (2, 2), 4, "analytic", progress=False, temperature=1.0, top_k=None, top_p=1.0)


# ----------------------------------------------------------------- pipeline and command line
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 16)


def test_pipeline_forwards_the_decoding_options(model_dir):
    from ddlm.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir)
    plain = pipe.sample(3, 8, 4, seed=0, progress=False)
    assert torch.equal(plain, pipe.sample(3, 8, 4, seed=0, progress=False, temperature=1.0, top_k=None, top_p=1.0))
    greedy = pipe.sample(3, 8, 4, seed=0, progress=False, temperature=0)
    assert torch.equal(greedy, pipe.sample(3, 8, 4, seed=0, progress=False, top_k=1))
    stats = {}
    ids = pipe.sample(3, 8, 4, "confidence", seed=0, progress=False, confidence="margin", stats=stats)
    assert ids.shape == (3, 8) and int(ids.max()) < pipe.graph.mask_id and stats["network_calls"] == 4
    stats = {}
    pipe.sample(2, 8, 4, "confidence", seed=0, progress=False, threshold=0.999, stats=stats)
    assert stats["network_calls"] == 8  # an untrained model is never that confident: one per step
    texts = pipe.infill("ab{{3}}cd", 2, 3, "confidence", seed=0, progress=False, entropy_bound=1.0)
    assert len(texts) == 2 and all(t.startswith("ab") and t.endswith("cd") for t in texts)
    with pytest.raises(ValueError, match="top_p"):
        pipe.sample(1, 8, 4, progress=False, top_p=0)


def test_cli_samples_with_decoding_options(model_dir, capsys):
    from ddlm.cli import SEPARATOR, main

    main(["sample", str(model_dir), "--num-samples", "2", "--length", "8", "--steps", "4", "--quiet",
          "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9"])
    assert capsys.readouterr().out.count(SEPARATOR) == 1
    main(["sample", str(model_dir), "--num-samples", "2", "--length", "8", "--steps", "4", "--quiet",
          "--predictor", "confidence", "--confidence", "max_prob", "--threshold", "0.9"])
    assert capsys.readouterr().out.count(SEPARATOR) == 1
    main(["infill", str(model_dir), "ab{{3}}cd", "--num-samples", "2", "--steps", "3", "--quiet", "--predictor", "confidence",
          "--confidence", "entropy", "--unmask-schedule", "cosine", "--temperature", "0"])
    assert capsys.readouterr().out.count(SEPARATOR) == 1


@pytest.mark.parametrize("argv,message", [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--threshold", "1.2"], "--threshold"),
    (["--entropy-bound", "-0.5"], "--entropy-bound"),
    (["--confidence", "best"], "--confidence"),
    (["--unmask-schedule", "cubic"], "--unmask-schedule"),
    (["--predictor", "analytic", "--threshold", "0.5"], "predictor='confidence'"),
    (["--predictor", "confidence", "--no-denoise"], "denoise"),
    (["--predictor", "confidence", "--threshold", "0.5", "--entropy-bound", "1"], "not both"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_cli_bad_decoding_options_exit_2_with_one_line(model_dir, capsys, argv, message):
    from ddlm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(model_dir), "--length", "4", "--steps", "2", "--quiet", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_cli_help_lists_each_decoding_option_with_its_default(capsys):
    from ddlm.cli import main

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ["--temperature", "--top-k", "--top-p", "--confidence", "--unmask-schedule", "--threshold", "--entropy-bound"]:
        assert option in out
    for default in ["1: the model's distribution", "(default: 1.0)", "default: off", "default: max_prob", "default: linear"]:
        assert default in out


def test_reshaping_runs_the_torch_row_path_under_impl_triton():
    """The fused kernel draws the plain law only; reshaped steps take the torch path, so both impls agree draw for draw."""
    graph, noise, oracle, _ = _setup()
    for predictor in ["analytic", "euler", "tau_leaping"]:
        a = _run(oracle, graph, noise, 8, predictor, num=2000, impl="torch", temperature=0.8, top_p=0.9)
        b = _run(oracle, graph, noise, 8, predictor, num=2000, impl="triton", temperature=0.8, top_p=0.9)
        assert torch.equal(a, b)


def test_confidence_decoding_with_the_exact_cache_of_a_time_independent_score():
    """A time-independent score function (cache on) gives the same draws as with the cache off, with fewer or equal calls."""
    graph, noise, oracle, exact_tv = _setup()

    def score_fn(x, sigma_bar):  # exact ratios written in the time-independent form: f = log p(y | x_t) at masked rows
        return oracle.score_fn(x, torch.full_like(sigma_bar, math.log(2.0)))

    score_fn.time_independent = True
    runs = []
    for cache in (True, False):
        stats = {}
        runs.append(sample(score_fn, graph, noise, (NUM, 3), 3, "confidence", generator=torch.Generator().manual_seed(1),
                           progress=False, cache=cache, stats=stats))
        assert stats["cache"] is cache
    assert torch.equal(*runs)
    assert oracle.total_variation(runs[0]) <= exact_tv + 0.01


def test_block_decoding_takes_the_decoding_options(model_dir):
    from ddlm.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir)
    stats = {}
    texts = pipe.generate(2, steps=2, predictor="confidence", prompt="ab", block_size=4, max_new_tokens=8, seed=0,
                          progress=False, confidence="entropy", top_k=5, stats=stats)
    assert len(texts) == 2 and all(t.startswith("ab") for t in texts) and stats["network_calls"] == 4  # 2 blocks x 2 steps


def test_a_row_without_finite_weights_stays_empty_and_is_refused():
    log_w = torch.full((1, 3), -math.inf, dtype=torch.float64)
    for options in (dict(temperature=0), dict(temperature=0.5, top_p=0.5), dict(top_k=1)):
        assert float(shape_log_weights(log_w, **options).sum()) == 0
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()

    def no_mass(x, sigma_bar):
        out = torch.zeros(*x.shape, graph.num_states, dtype=torch.float64)
        out[..., : graph.mask_id] = -math.inf
        return out

    for predictor in ["first_hitting", "confidence"]:
        with pytest.raises(ValueError, match="no finite positive weight"):
            sample(no_mass, graph, noise, (2, 2), 2, predictor, progress=False, temperature=0)
