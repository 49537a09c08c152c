"""Reverse samplers driven by exact ratios reproduce known distributions."""

import pytest
import torch

import ddlm
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
    keep = torch.ones_like(oracle.probs, dtype=torch.bool)
    for i in fixed_positions:
        index = [slice(None)] * 3
        index[i] = tokens[i].item()
        mask = torch.zeros_like(keep)
        mask[tuple(index)] = True
        keep &= mask
    conditional = ddlm.SequenceOracle(graph, oracle.probs * keep, 3)
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
