"""Reverse samplers driven by exact ratios reproduce known distributions."""

import pytest
import torch

import ddlm
from helpers import conditional_oracle
from ddlm.sampling import analytic_step, sample

NUM = 50_000
# (graph, schedule, steps): step counts at which each predictor meets the TV criterion.
SETUPS = {
    "absorbing": (ddlm.Absorbing(3), ddlm.LogLinear(), 128),
    "uniform": (ddlm.Uniform(3), ddlm.Geometric(), 256),
}


@pytest.mark.parametrize("predictor", ["analytic", "euler", "tau_leaping"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_predictor_reproduces_a_known_distribution(setup, predictor):
    graph, noise, steps = SETUPS[setup]
    gen = torch.Generator().manual_seed(11)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    exact_tv = oracle.total_variation(oracle.sample(NUM, gen))
    x = sample(oracle.score_fn, graph, noise, (NUM, 3), steps, predictor, generator=gen, progress=False)
    assert x.shape == (NUM, 3) and x.dtype == torch.long
    assert int(x.max()) < graph.num_tokens  # denoised: real tokens only
    assert oracle.total_variation(x) <= exact_tv + 0.01


@pytest.mark.parametrize("predictor", ["analytic", "euler"])
@pytest.mark.parametrize("fixed_positions", [[0], [0, 2]], ids=["prompt", "infill"])
def test_clamped_positions_give_the_conditional_distribution(predictor, fixed_positions):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    gen = torch.Generator().manual_seed(12)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    tokens = torch.tensor([1, 0, 2])
    conditional = conditional_oracle(oracle, tokens, fixed_positions)
    num = 20_000
    fixed = torch.zeros(num, 3, dtype=torch.bool)
    fixed[:, fixed_positions] = True
    x_init = tokens.expand(num, 3).clone()
    x = sample(oracle.score_fn, graph, noise, (num, 3), 128, predictor, generator=gen, x_init=x_init, fixed=fixed, progress=False)
    assert torch.equal(x[fixed], x_init[fixed])
    exact_tv = conditional.total_variation(conditional.sample(num, gen))
    assert conditional.total_variation(x) <= exact_tv + 0.01


@pytest.mark.parametrize("graph", [ddlm.Uniform(4), ddlm.Absorbing(4)], ids=repr)
@pytest.mark.parametrize("sigma,dsigma", [(1.2, 0.5), (0.3, 0.3)])
def test_one_analytic_step_is_the_exact_posterior(graph, sigma, dsigma):
    """With one position the analytic step must draw exactly from p(x_s | x_t)."""
    gen = torch.Generator().manual_seed(13)
    oracle = ddlm.SequenceOracle.random(graph, 1, gen)
    p_s = oracle.marginal(sigma - dsigma)  # [S]
    step = torch.linalg.matrix_exp(dsigma * graph.rate_matrix())
    num = 100_000
    for start in [0, graph.num_states - 1]:
        x_t = torch.full((num, 1), start)
        score = torch.exp(oracle.score_fn(x_t, torch.full((num,), sigma, dtype=torch.float64)))
        x_s = analytic_step(graph, x_t, score, torch.tensor(dsigma, dtype=torch.float64), gen, clean_only=sigma == dsigma)
        posterior = p_s * step[:, start]
        posterior = posterior / posterior.sum()
        freq = torch.bincount(x_s.reshape(-1), minlength=graph.num_states).double() / num
        assert (freq - posterior).abs().max() < 4 * (0.25 / num) ** 0.5


def test_same_seed_same_samples_and_progress_bar(capsys):
    graph, noise = ddlm.Uniform(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(0))
    a = sample(oracle.score_fn, graph, noise, (32, 3), 8, "euler", generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(oracle.score_fn, graph, noise, (32, 3), 8, "euler", generator=torch.Generator().manual_seed(1), progress=True)
    assert torch.equal(a, b)
    assert "sampling (euler)" in capsys.readouterr().err


def test_sampling_bad_input():
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 2, torch.Generator().manual_seed(0))
    run = lambda **kw: sample(**{"score_fn": oracle.score_fn, "graph": graph, "noise": noise, "shape": (4, 2), "steps": 4, "progress": False, **kw})
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        run(steps=0)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        run(steps=2.5)
    with pytest.raises(ValueError, match="predictor must be one of"):
        run(predictor="heun")
    with pytest.raises(ValueError, match="shape must be"):
        run(shape=(4,))
    with pytest.raises(ValueError, match=r"score_fn must return log-scores of shape \[4, 2, 4\]"):
        run(score_fn=lambda x, s: torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match="NaN"):
        run(score_fn=lambda x, s: torch.full((4, 2, 4), float("nan")))
    with pytest.raises(TypeError, match="score_fn must be callable"):
        run(score_fn="model")
    with pytest.raises(ValueError, match="fixed needs x_init"):
        run(fixed=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="fixed must be a Bool tensor"):
        run(x_init=torch.zeros(4, 2, dtype=torch.long), fixed=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="x_init holds ids"):
        run(x_init=torch.full((4, 2), 7))
    with pytest.raises(ValueError, match="mask id"):
        run(x_init=torch.full((4, 2), 3), fixed=torch.ones(4, 2, dtype=torch.bool))


# --------------------------------------------------------------------------- restricted rows vs the full-row reference
class LinearNoise:
    """sigma_bar(t) = c t: a one-step sample() from x_init is a reverse step at sigma_bar = c, dt = 1 - t_min."""

    def __init__(self, c: float):
        self.c = c

    def total(self, t):
        return self.c * t

    def rate(self, t):
        return torch.full_like(t, self.c)


def exact_one_step_law(graph, oracle, x, fixed, kind, sigma, dt, rate, dsigma):
    """Joint law [S^L] of one reverse step from x Long[L], by the formulas of DESIGN §3 on the dense Q (float64)."""
    q = graph.rate_matrix()
    s = torch.exp(oracle.score_fn(x[None], torch.tensor([sigma], dtype=torch.float64))[0])  # [L, S]
    law = torch.ones(())
    for i, xi in enumerate(x.tolist()):
        p = torch.zeros(graph.num_states, dtype=torch.float64)
        if fixed is not None and fixed[i]:
            p[xi] = 1
        elif kind in ("euler", "tau_leaping"):
            r = rate * q[:, xi] * s[i]
            r[xi] = 0
            if kind == "euler":
                p = dt * r
                p[xi] = (1 - p.sum()).clamp_min(0)
            else:
                total = r.sum()
                p = -torch.expm1(-dt * total) * r / total if total > 0 else r
                p[xi] = torch.exp(-dt * total)
        else:
            staggered = torch.linalg.matrix_exp(-dsigma * q).T @ s[i]
            p = (staggered * torch.linalg.matrix_exp(dsigma * q)[:, xi]).clamp_min(0)
            if kind == "denoise" and graph.mask_id is not None:
                p[graph.mask_id] = 0
        law = (law[..., None] * (p / p.sum())).reshape(-1)
    return law


def joint_frequencies(x, num_states):
    codes = (x * num_states ** torch.arange(x.shape[1] - 1, -1, -1)).sum(-1)
    return torch.bincount(codes, minlength=num_states ** x.shape[1]).double() / x.shape[0]


def entropy(freq):
    return float(-torch.xlogy(freq, freq).sum())


ONE_STEP = [(ddlm.Absorbing(3), 3), (ddlm.Absorbing(4), 2), (ddlm.Uniform(3), 3), (ddlm.Uniform(4), 2)]


@pytest.mark.parametrize("fixed_first", [False, True], ids=["free", "fixed"])
@pytest.mark.parametrize("kind", ["euler", "tau_leaping", "analytic", "denoise"])
@pytest.mark.parametrize("graph,length", ONE_STEP, ids=lambda v: repr(v) if isinstance(v, ddlm.processes.Graph) else str(v))
def test_restricted_step_draws_the_exact_step_law_like_the_full_row_reference(graph, length, kind, fixed_first):
    """One step of sample() (only rows that can move are scored and drawn) against the exact product law of
    the step, and against the full-row float64 reference on the same seed: both within exact-draw TV, and
    the entropies of the two sample sets agree. (Draws differ: the arithmetic and the random streams do.)"""
    gen = torch.Generator().manual_seed(21)
    oracle = ddlm.SequenceOracle.random(graph, length, gen)
    num = 60_000
    start = torch.randint(graph.num_states, (length,), generator=gen)
    if graph.mask_id is not None:
        start[1:] = graph.mask_id  # masked and clean positions side by side
        start[0] = 1
    fixed = None
    if fixed_first:
        start[0] = 2
        fixed = torch.zeros(length, dtype=torch.bool)
        fixed[0] = True
    c, t_min = 1.3, 0.45
    sigma, dt, dsigma = c, 1 - t_min, c * (1 - t_min)
    if kind == "denoise":
        dsigma = sigma
    law = exact_one_step_law(graph, oracle, start, fixed, kind, sigma, dt, c, dsigma)
    if fixed is not None and graph.mask_id is None and kind != "denoise":
        # sample() starts free positions from the limit (uniform tokens): the law is the mixture over those starts
        starts = ddlm.SequenceOracle(graph, torch.ones(graph.num_tokens ** length), length).sequences
        starts = starts[starts[:, 0] == start[0]]
        law = sum(exact_one_step_law(graph, oracle, s, fixed, kind, sigma, dt, c, dsigma) for s in starts) / len(starts)
    exact_tv = 0.5 * float((joint_frequencies(oracle_draws(law, num, gen, graph.num_states, length), graph.num_states) - law).abs().sum())

    def run(impl):
        g = torch.Generator().manual_seed(5)
        x_init = start.expand(num, length).clone()
        if kind == "denoise":  # the final step, called directly on [B, L] (rows that cannot move are skipped inside)
            log_s = oracle.score_fn(x_init, torch.full((num,), sigma, dtype=torch.float64))
            free = slice(None) if fixed is None else ~fixed  # clamped columns are not handed to the step
            x_init[:, free] = ddlm.sampling.reverse_step(graph, x_init[:, free], log_s[:, free], "denoise", 0.0, 0.0, dsigma, impl, generator=g)
            return x_init
        return sample(oracle.score_fn, graph, LinearNoise(c), (num, length), 1, kind, denoise=False, generator=g,
                      x_init=x_init, fixed=None if fixed is None else fixed.expand(num, length), t_min=t_min, impl=impl, progress=False)

    new, ref = joint_frequencies(run("torch"), graph.num_states), joint_frequencies(run("reference"), graph.num_states)
    assert float(new[law == 0].sum()) == 0
    tv_new, tv_ref = (0.5 * float((f - law).abs().sum()) for f in (new, ref))
    assert tv_new <= exact_tv + 0.006
    assert tv_ref <= exact_tv + 0.006
    assert abs(entropy(new) - entropy(ref)) <= 0.015
    assert abs(entropy(new) - entropy(law)) <= 0.015


def oracle_draws(law, num, gen, num_states, length):
    codes = torch.multinomial(law, num, replacement=True, generator=gen)
    digits = num_states ** torch.arange(length - 1, -1, -1)
    return (codes[:, None] // digits) % num_states


RUNS = {
    "absorbing": (ddlm.Absorbing(3), ddlm.LogLinear(), 2),
    "uniform": (ddlm.Uniform(4), ddlm.Geometric(), 2),
}


@pytest.mark.parametrize("fixed_first", [False, True], ids=["free", "prompt"])
@pytest.mark.parametrize("predictor", ["analytic", "euler", "tau_leaping"])
@pytest.mark.parametrize("setup", list(RUNS))
def test_restricted_sampler_matches_the_oracle_and_the_full_row_reference(setup, predictor, fixed_first):
    graph, noise, length = RUNS[setup]
    gen = torch.Generator().manual_seed(31)
    oracle = ddlm.SequenceOracle.random(graph, length, gen)
    num, steps = 12_000, 64
    fixed, x_init, target = None, None, oracle
    if fixed_first:
        fixed = torch.zeros(num, length, dtype=torch.bool)
        fixed[:, 0] = True
        x_init = torch.full((num, length), 1)
        keep = torch.zeros_like(oracle.probs, dtype=torch.bool)
        keep[1] = True
        target = ddlm.SequenceOracle(graph, oracle.probs * keep, length)
    exact_tv = target.total_variation(target.sample(num, gen))
    # Clamping a noised Uniform token is not conditioning on the clean one: the conditional oracle's exact ratios drive
    # both runs (for Absorbing they equal the unconditional ones on free positions).
    runs = {impl: sample(target.score_fn, graph, noise, (num, length), steps, predictor, generator=torch.Generator().manual_seed(7),
                         x_init=x_init, fixed=fixed, impl=impl, progress=False) for impl in ("torch", "reference")}
    freq = {impl: joint_frequencies(x, graph.num_tokens) for impl, x in runs.items()}
    if fixed is not None:
        assert torch.equal(runs["torch"][:, 0], x_init[:, 0])
    assert target.total_variation(runs["torch"]) <= exact_tv + 0.012
    assert abs(target.total_variation(runs["torch"]) - target.total_variation(runs["reference"])) <= 0.012
    assert abs(entropy(freq["torch"]) - entropy(freq["reference"])) <= 0.03


class CountingScore:
    """A score function that accepts positions and records the rows asked for."""

    accepts_positions = True

    def __init__(self, oracle):
        self.oracle, self.asked = oracle, []

    def __call__(self, x, sigma, positions=None):
        full = self.oracle.score_fn(x, sigma)
        if positions is None:
            self.asked.append(x.numel())
            return full
        self.asked.append(int(positions.sum()))
        return full[positions]


@pytest.mark.parametrize("graph", [ddlm.Absorbing(3), ddlm.Uniform(3)], ids=repr)
def test_only_rows_that_can_change_are_scored_and_plain_callables_fall_back(graph):
    gen = torch.Generator().manual_seed(3)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    score = CountingScore(oracle)
    fixed = torch.tensor([[True, False, False]] * 5)
    x_init = torch.ones(5, 3, dtype=torch.long)
    kwargs = dict(x_init=x_init, fixed=fixed, progress=False, predictor="euler")
    a = sample(score, graph, ddlm.LogLinear(), (5, 3), 6, generator=torch.Generator().manual_seed(1), **kwargs)
    b = sample(oracle.score_fn, graph, ddlm.LogLinear(), (5, 3), 6, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b)  # the gathered fallback draws exactly what the row-restricted call draws
    assert all(0 < n <= 10 for n in score.asked)  # never the clamped column, never more than the free rows
    if graph.mask_id is not None:
        assert len(score.asked) <= 7 and score.asked == sorted(score.asked, reverse=True)  # masked rows only, shrinking
    else:
        assert score.asked == [10] * 7
