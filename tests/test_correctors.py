"""Correctors (``ddlm.correctors``) against exact oracles: remasking keeps the sampler's marginals, the
predictor-corrector steps keep p_t invariant and pull other laws towards it.

Measured here (OMP_NUM_THREADS=1, the tests' seeds; the TV of the same number of exact draws in brackets):
- remasking, product distribution over 3^3 sequences, 4 steps, 20k draws: TV 0.009-0.015 for eta 0.5 and 1
  and every grid predictor [0.009]: exact at any step count;
- remasking, random non-product 3^3 distribution, analytic, 10k draws: at 256 steps 0.024 (eta 0.5) and
  0.022 (eta 1) [0.019], within noise plus a small remainder; at 16 steps remasking is worse than none
  (0.040 / 0.057 against 0.028): more positions unmask in parallel per step, so each step's
  factorisation error grows;
- one position after 8 analytic steps with eta = 1 down to t = 0.3 / 0.7 (denoise=False), 40k draws: the
  law is p_t within 0.0013 / 0.0024 (4 sigma = 0.01); unmasked fraction 0.7017 / 0.2983 against
  alpha(t) = 0.7003 / 0.3007;
- corrector steps from an exact draw of p_t (t = 0.5, 20 steps of dt = 0.05, 20k draws): TV to p_t 0.015
  [0.011] for Uniform, 0.022 [0.018] for Absorbing; from a wrong law (Uniform: uniform tokens, TV 0.10;
  Absorbing: clean data, TV 0.87) 40 steps bring it to 0.016 / 0.018;
- PC sampling, Uniform(3), Geometric schedule, analytic predictor, 8 steps, 20k draws: TV 0.087 without a
  corrector (9 network calls), 0.020 with 4 corrector steps of size 0.5 (41 calls) [0.015]; 40 plain
  analytic steps (41 calls) give 0.026, so at equal calls it is comparable to more predictor steps, not
  clearly better. With the LogLinear schedule one corrector step of size 1 after each of 4 steps made it
  worse in a separate run (0.176 against 0.134): the first corrector steps' Euler probabilities exceed 1
  (sigma(t) dt ~ 1 there) and are clipped; size 0.25 with 4 steps gave 0.062.
"""

import math

import pytest
import torch

import ddlm
from ddlm.correctors import corrector_step, remask_probability, remask_tokens
from ddlm.sampling import sample
from ddlm.score_cache import ScoreEvaluator

GRID = ["analytic", "euler", "tau_leaping"]


def product_oracle(graph, seed):
    """A distribution over 3^3 sequences whose positions are independent."""
    gen = torch.Generator().manual_seed(seed)
    marginals = [torch.empty(graph.num_tokens, dtype=torch.float64).exponential_(generator=gen) for _ in range(3)]
    return ddlm.SequenceOracle(graph, torch.einsum("a,b,c->abc", *marginals), 3)


def noised_tv(oracle, x, sigma_bar):
    """TV between the empirical law of noised sequences x Long[M, L] and the exact p_t at sigma_bar."""
    s, length = oracle.graph.num_states, oracle.length
    codes = (x * s ** torch.arange(length - 1, -1, -1)).sum(-1)
    freq = torch.bincount(codes, minlength=s**length).double() / x.shape[0]
    return 0.5 * float((freq - oracle.marginal(sigma_bar).reshape(-1)).abs().sum())


class Recorder:
    """The oracle's score function, recording every (x, sigma_bar) it is called with."""

    def __init__(self, oracle):
        self.oracle, self.calls = oracle, []

    def __call__(self, x, sigma_bar):
        self.calls.append((x.clone(), sigma_bar.clone()))
        return self.oracle.score_fn(x, sigma_bar)


# ----------------------------------------------------------------------------- defaults change nothing
@pytest.mark.parametrize("predictor", GRID)
@pytest.mark.parametrize("graph", [ddlm.Absorbing(3), ddlm.Uniform(3)], ids=repr)
def test_defaults_and_inactive_correctors_reproduce_the_plain_draws(graph, predictor):
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(0))
    fixed = torch.zeros(64, 3, dtype=torch.bool)
    fixed[:32, 0] = True
    x_init = torch.zeros(64, 3, dtype=torch.long)
    run = lambda **kw: sample(oracle.score_fn, graph, ddlm.LogLinear(), (64, 3), 16, predictor, x_init=x_init, fixed=fixed,
                              generator=torch.Generator().manual_seed(1), progress=False, **kw)
    plain = run()
    assert torch.equal(plain, run(remask=0.0, remask_window=None, corrector_steps=0, corrector_size=1.0))
    assert torch.equal(plain, run(remask=0, remask_window=(0.9, 0.1), corrector_size=0.3))
    if graph.mask_id is not None:  # remasking only outside the grid's start times: rho = 0 at every step, no draws
        assert torch.equal(plain, run(remask=1.0, remask_window=(0.5, 0.45)))


# ----------------------------------------------------------------------------- remasking
def test_remask_probability_is_remdm_sigma_max_scaled_and_capped_below_one():
    noise = ddlm.LogLinear()
    times = torch.linspace(1.0, 1e-5, 65, dtype=torch.float64)
    totals = noise.total(times).tolist()
    for k in range(64):
        alpha_k, alpha_next = math.exp(-totals[k]), math.exp(-totals[k + 1])
        sigma_max = min(1.0, (1 - alpha_next) / alpha_k)
        for eta in (0.25, 1.0):
            rho = remask_probability(eta, totals[k], totals[k + 1], totals[0])
            assert 0 <= rho < 1 and rho <= eta * sigma_max + 1e-15
            assert totals[k] - math.log1p(-rho) <= totals[0] + 1e-9  # never noisier than the start
            # after remasking, the reverse step's unmasking probability is a probability
            alpha_from = (1 - rho) * alpha_k
            assert alpha_from <= alpha_next + 1e-15
            # the cap 1 - alpha(1) / alpha_k moves rho by at most alpha(1) / alpha_k (<= 0.008 from step 8 on)
            cap = 1 - math.exp(-totals[0]) / alpha_k
            assert rho == pytest.approx(min(eta * sigma_max, cap), rel=1e-12, abs=1e-15)
            assert eta * sigma_max - rho <= math.exp(-totals[0]) / alpha_k + 1e-15
            if eta < 1 and k >= 8:
                assert rho == pytest.approx(eta * sigma_max, rel=1e-12)
    assert remask_probability(1.0, totals[0], totals[1], totals[0]) == 0.0  # nothing to gain at t = 1
    assert remask_probability(0.0, totals[10], totals[11], totals[0]) == 0.0


def test_remask_tokens_masks_unmasked_free_positions_with_probability_rho():
    graph = ddlm.Absorbing(3)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(4, (20_000, 3), generator=gen)
    fixed = torch.zeros_like(x, dtype=torch.bool)
    fixed[:, 0] = True
    out = remask_tokens(graph, x, 0.3, fixed, gen)
    assert torch.equal(out[:, 0], x[:, 0])
    free_real = (x[:, 1:] != graph.mask_id)
    changed = out[:, 1:] != x[:, 1:]
    assert torch.all(out[:, 1:][changed] == graph.mask_id) and not bool((changed & ~free_real).any())
    frac = float(changed.sum()) / float(free_real.sum())
    assert abs(frac - 0.3) < 4 * math.sqrt(0.21 / float(free_real.sum()))


@pytest.mark.parametrize("predictor", GRID)
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_remasking_is_exact_for_a_product_distribution_at_few_steps(eta, predictor):
    graph = ddlm.Absorbing(3)
    oracle = product_oracle(graph, 3)
    gen = torch.Generator().manual_seed(4)
    num = 20_000
    exact_tv = oracle.total_variation(oracle.sample(num, gen))
    x = sample(oracle.score_fn, graph, ddlm.LogLinear(), (num, 3), 4, predictor, generator=gen, progress=False, remask=eta)
    assert oracle.total_variation(x) <= exact_tv + 0.01


def test_remasking_with_the_reference_impl_and_a_shaped_draw():
    graph = ddlm.Absorbing(3)
    oracle = product_oracle(graph, 5)
    gen = torch.Generator().manual_seed(6)
    num = 20_000
    exact_tv = oracle.total_variation(oracle.sample(num, gen))
    x = sample(oracle.score_fn, graph, ddlm.LogLinear(), (num, 3), 4, "euler", generator=gen, progress=False, remask=1.0,
               impl="reference")
    assert oracle.total_variation(x) <= exact_tv + 0.01
    # temperature 0 with remasking: every position ends at its most likely token (independent positions)
    x = sample(oracle.score_fn, graph, ddlm.LogLinear(), (64, 3), 8, "analytic", generator=gen, progress=False, remask=0.5,
               temperature=0.0)
    best = torch.stack([oracle.probs.sum(dim=tuple(j for j in range(3) if j != i)).argmax() for i in range(3)])
    assert torch.equal(x, best.expand(64, 3))


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_remasking_with_many_steps_reproduces_a_non_product_distribution(eta):
    graph = ddlm.Absorbing(3)
    gen = torch.Generator().manual_seed(11)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    num = 10_000
    exact_tv = oracle.total_variation(oracle.sample(num, gen))
    stats = {}
    x = sample(oracle.score_fn, graph, ddlm.LogLinear(), (num, 3), 256, "analytic", generator=gen, progress=False, remask=eta,
               stats=stats)
    assert oracle.total_variation(x) <= exact_tv + 0.01
    assert stats["network_calls"] <= 257  # no extra calls: one per step at most


@pytest.mark.parametrize("t_end", [0.3, 0.7])
def test_remasking_keeps_the_time_marginal_exact(t_end):
    """One position (no factorisation error): after 8 remasking analytic steps the law is exactly p_t, so the
    unmasked fraction is alpha(t)."""
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    gen = torch.Generator().manual_seed(7)
    oracle = ddlm.SequenceOracle.random(graph, 1, gen)
    num = 40_000
    x = sample(oracle.score_fn, graph, noise, (num, 1), 8, "analytic", denoise=False, t_min=t_end, generator=gen,
               progress=False, remask=1.0)
    sigma_bar = float(noise.total(torch.tensor(t_end, dtype=torch.float64)))
    freq = torch.bincount(x.reshape(-1), minlength=4).double() / num
    assert (freq - oracle.marginal(sigma_bar)).abs().max() < 4 * math.sqrt(0.25 / num)
    assert abs(float(freq[:3].sum()) - math.exp(-sigma_bar)) < 4 * math.sqrt(0.25 / num)


def test_remasking_revises_tokens_never_fixed_ones_and_only_inside_its_window():
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(8))
    num, steps = 200, 32
    fixed = torch.zeros(num, 3, dtype=torch.bool)
    fixed[:, 1] = True
    x_init = torch.full((num, 3), 2)
    grid = noise.total(torch.linspace(1.0, 1e-5, steps + 1, dtype=torch.float64)).tolist()

    def run(**kw):
        record = Recorder(oracle)
        x = sample(record, graph, noise, (num, 3), steps, "analytic", generator=torch.Generator().manual_seed(9),
                   x_init=x_init, fixed=fixed, progress=False, **kw)
        assert torch.all(x[:, 1] == 2)
        assert all(bool(torch.all(seen[:, 1] == 2)) for seen, _ in record.calls)  # the fixed position never changes
        # a real token at one call and the mask at the next was remasked (reverse steps never mask)
        remasked = sum(int(((a != graph.mask_id) & (b == graph.mask_id)).sum()) for (a, _), (b, _) in
                       zip(record.calls, record.calls[1:]))
        sigmas = [float(s[0]) for _, s in record.calls]
        return remasked, sigmas

    assert run()[0] == 0
    remasked, sigmas = run(remask=0.5)
    assert remasked > 50
    off_grid = [s for s in sigmas if min(abs(s - g) for g in grid) > 1e-12]
    assert len(off_grid) >= steps - 2  # remasking starts every step but the first (rho_0 = 0)
    # with a window only steps starting in [t_lo, t_hi] start off the grid, at their sigma_bar'
    window = (0.6, 0.3)
    times = torch.linspace(1.0, 1e-5, steps + 1, dtype=torch.float64).tolist()
    expected = {round(grid[k] - math.log1p(-remask_probability(0.5, grid[k], grid[k + 1], grid[0])), 9)
                for k in range(steps) if window[1] <= times[k] <= window[0]}
    remasked, sigmas = run(remask=0.5, remask_window=window)
    starts = {round(s, 9) for s in sigmas if min(abs(s - g) for g in grid) > 1e-12}
    assert starts == expected and len(expected) >= 8 and remasked > 0


def test_remasking_with_the_cache_gives_the_same_draws_and_counts_calls():
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(10))

    def score_fn(x, sigma_bar):  # exact ratios in the time-independent form: f = log p(y | x_t) at masked rows
        score_fn.calls += 1
        return oracle.score_fn(x, torch.full_like(sigma_bar, math.log(2.0)))

    score_fn.time_independent = True
    runs = {}
    for cache in (True, False):
        score_fn.calls, stats = 0, {}
        x = sample(score_fn, graph, noise, (16, 3), 64, "analytic", generator=torch.Generator().manual_seed(3), progress=False,
                   cache=cache, stats=stats, remask=0.5, corrector_steps=1, corrector_size=0.5)
        assert stats["network_calls"] == score_fn.calls and stats["cache"] is cache
        runs[cache] = (x, score_fn.calls)
    assert torch.equal(runs[True][0], runs[False][0]) and runs[True][1] <= runs[False][1]


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's log(0) of a zero stay weight, as in test_kernels
def test_remasking_with_the_triton_kernel():
    pytest.importorskip("triton")
    graph = ddlm.Absorbing(3)
    oracle = product_oracle(graph, 12)
    gen = torch.Generator().manual_seed(13)
    num = 4_000
    exact_tv = oracle.total_variation(oracle.sample(num, gen))
    x = sample(oracle.score_fn, graph, ddlm.LogLinear(), (num, 3), 4, "euler", generator=gen, progress=False, remask=1.0,
               impl="triton")
    assert oracle.total_variation(x) <= exact_tv + 0.02


# ----------------------------------------------------------------------------- predictor-corrector
SETUP_T = 0.5


@pytest.mark.parametrize("graph", [ddlm.Uniform(3), ddlm.Absorbing(3)], ids=repr)
def test_corrector_steps_keep_p_t_and_pull_a_wrong_law_towards_it(graph):
    noise = ddlm.LogLinear()
    gen = torch.Generator().manual_seed(5)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    num = 20_000
    t = torch.tensor(SETUP_T, dtype=torch.float64)
    sigma_bar, rate = float(noise.total(t)), float(noise.rate(t))
    scores = ScoreEvaluator(oracle.score_fn, graph)
    exact = graph.sample_transition(oracle.sample(num, gen), sigma_bar, gen)
    exact_tv = noised_tv(oracle, graph.sample_transition(oracle.sample(num, gen), sigma_bar, gen), sigma_bar)
    # from p_t: 20 steps of dt = 0.05 (dt * exit rate ~ 0.13 per position); the O(K dt^2) drift stays below 0.01
    x = exact
    for _ in range(20):
        x = corrector_step(scores, graph, x, None, sigma_bar, rate, 0.05, gen)
    assert scores.calls == 20
    assert noised_tv(oracle, x, sigma_bar) <= exact_tv + 0.01
    # from a wrong law: uniform random tokens (Uniform) or the clean data (Absorbing, nothing masked)
    x = graph.sample_limit(num, 3, generator=gen) if graph.mask_id is None else oracle.sample(num, gen)
    start_tv = noised_tv(oracle, x, sigma_bar)
    for _ in range(40):
        x = corrector_step(scores, graph, x, None, sigma_bar, rate, 0.05, gen)
    assert start_tv > 0.09 and noised_tv(oracle, x, sigma_bar) <= exact_tv + 0.01


def test_corrector_steps_leave_fixed_positions_alone():
    graph, noise = ddlm.Uniform(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(6))
    fixed = torch.zeros(100, 3, dtype=torch.bool)
    fixed[:, 2] = True
    x_init = torch.ones(100, 3, dtype=torch.long)
    x = sample(oracle.score_fn, graph, noise, (100, 3), 4, "euler", generator=torch.Generator().manual_seed(1), progress=False,
               x_init=x_init, fixed=fixed, corrector_steps=3)
    assert torch.all(x[:, 2] == 1)
    y = corrector_step(ScoreEvaluator(oracle.score_fn, graph), graph, x_init, torch.ones_like(fixed), 0.5, 1.0, 0.1)
    assert torch.equal(y, x_init)


def test_predictor_corrector_sampling_lowers_the_tv_of_a_few_step_uniform_sampler():
    graph, noise = ddlm.Uniform(3), ddlm.Geometric()
    gen = torch.Generator().manual_seed(11)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    num, steps = 20_000, 8
    exact_tv = oracle.total_variation(oracle.sample(num, gen))
    tvs, calls = {}, {}
    for k, size in [(0, 1.0), (4, 0.5)]:
        stats = {}
        x = sample(oracle.score_fn, graph, noise, (num, 3), steps, "analytic", generator=gen, progress=False,
                   corrector_steps=k, corrector_size=size, stats=stats)
        tvs[k], calls[k] = oracle.total_variation(x), stats["network_calls"]
    assert calls == {0: steps + 1, 4: steps + 1 + 4 * steps}
    assert tvs[0] > exact_tv + 0.04  # 8 steps alone are visibly off
    assert tvs[4] < tvs[0] - 0.04 and tvs[4] <= exact_tv + 0.02


# ----------------------------------------------------------------------------- bad input
def test_corrector_bad_input():
    absorbing, uniform = ddlm.Absorbing(3), ddlm.Uniform(3)
    oracle = ddlm.SequenceOracle.random(absorbing, 2, torch.Generator().manual_seed(0))
    uniform_oracle = ddlm.SequenceOracle.random(uniform, 2, torch.Generator().manual_seed(0))

    def run(graph=absorbing, **kw):
        score_fn = oracle.score_fn if graph is absorbing else uniform_oracle.score_fn
        return sample(score_fn, graph, ddlm.LogLinear(), (4, 2), 4, progress=False, **kw)

    for value in (-0.1, 1.5, float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="remask must be a number in \\[0, 1\\]"):
            run(remask=value)
    for window in ((0.2, 0.5), (0.5, 0.5), (1.5, 0.2), (0.5, -0.1), (0.5,), 0.5, (0.5, float("nan")), ("a", "b")):
        with pytest.raises(ValueError, match="remask_window must be None or two numbers"):
            run(remask=0.5, remask_window=window)
    for steps in (-1, 1.5, True, None, "2"):
        with pytest.raises(ValueError, match="corrector_steps must be an int >= 0"):
            run(corrector_steps=steps)
    for size in (0, -1.0, float("inf"), float("nan"), None, "1"):
        with pytest.raises(ValueError, match="corrector_size must be a finite number > 0"):
            run(corrector_steps=1, corrector_size=size)
    with pytest.raises(ValueError, match="remask needs an absorbing process.*allowed for it: remask=0"):
        run(graph=uniform, remask=0.5)
    for predictor in ("first_hitting", "confidence"):
        with pytest.raises(ValueError, match="remask needs one of the predictors .*'euler'"):
            run(predictor=predictor, remask=0.5)
        with pytest.raises(ValueError, match="corrector_steps needs one of the predictors .*'analytic'"):
            run(predictor=predictor, corrector_steps=1)
    run(predictor="first_hitting", remask=0.0, corrector_steps=0)  # the defaults are fine with every predictor


# ----------------------------------------------------------------------------- CLI and pipeline
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    from helpers import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 16)


def test_cli_samples_with_remasking_and_a_corrector(model_dir, capsys):
    from ddlm.cli import main

    main(["sample", str(model_dir), "--num-samples", "2", "--length", "8", "--steps", "4", "--quiet", "--remask", "0.5",
          "--remask-window", "0.9", "0.1", "--corrector-steps", "1", "--corrector-size", "0.5"])
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("argv,message", [
    (["--remask", "1.5"], "argument --remask: expected a number in [0, 1]"),
    (["--remask", "nan"], "argument --remask: expected a number in [0, 1]"),
    (["--remask", "x"], "argument --remask: expected a number"),
    (["--remask-window", "0.5", "2"], "argument --remask-window: expected a time in [0, 1]"),
    (["--remask", "0.5", "--remask-window", "0.2", "0.5"], "remask_window must be None or two numbers"),
    (["--corrector-steps", "-1"], "argument --corrector-steps: expected an integer >= 0"),
    (["--corrector-steps", "1.5"], "argument --corrector-steps: expected an integer >= 0"),
    (["--corrector-size", "0"], "argument --corrector-size: expected a finite number > 0"),
    (["--corrector-size", "inf"], "argument --corrector-size: expected a finite number > 0"),
    (["--predictor", "first_hitting", "--remask", "0.5"], "remask needs one of the predictors"),
])
def test_cli_bad_corrector_options_exit_2_with_one_line(model_dir, capsys, argv, message):
    from ddlm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(model_dir), "--steps", "2", "--length", "4", "--quiet", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_pipeline_passes_the_corrector_options_to_the_sampler(model_dir):
    from ddlm.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_dir)
    stats = {}
    ids = pipe.sample(3, 6, 4, corrector_steps=2, corrector_size=0.5, remask=0.5, seed=1, progress=False, stats=stats)
    assert ids.shape == (3, 6) and int(ids.max()) < pipe.graph.num_tokens
    assert stats["network_calls"] > 5  # the corrector calls the network
    texts = pipe.generate(2, 6, 4, remask=1.0, remask_window=(0.8, 0.2), seed=1, progress=False)
    assert len(texts) == 2
    with pytest.raises(ValueError, match="remask"):
        pipe.sample(2, 6, 4, remask=2.0, progress=False)
