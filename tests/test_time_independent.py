"""Time-independent absorbing models: the identity s_y = p(y | x_t) / (e^sigma_bar - 1), the model, the exact cache."""

import itertools
import json
import math

import pytest
import torch

import ddlm
from ddlm.sampling import sample
from ddlm.score_cache import ScoreEvaluator, apply_time_factor


def exact_conditional(oracle: ddlm.SequenceOracle, x_t: torch.Tensor) -> torch.Tensor:
    """p0(x0_i = y | the unmasked tokens of x_t) by enumeration, [L, N] (rows of unmasked positions unused)."""
    n, mask = oracle.graph.num_tokens, oracle.graph.mask_id
    probs = oracle.probs.clone()
    for i, token in enumerate(x_t.tolist()):
        if token != mask:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[token] = True
            shape = [1] * oracle.length
            shape[i] = n
            probs = probs * keep.reshape(shape)
    probs = probs / probs.sum()
    rows = []
    for i in range(oracle.length):
        axes = tuple(a for a in range(oracle.length) if a != i)
        rows.append(probs.sum(axes) if axes else probs)
    return torch.stack(rows)


@pytest.mark.parametrize("noise", [ddlm.LogLinear(), ddlm.Geometric()], ids=lambda n: type(n).__name__)
def test_masked_ratios_are_the_clean_conditional_over_expm1_sigma_bar(noise):
    graph = ddlm.Absorbing(3)
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(5))
    states = torch.tensor(list(itertools.product(range(graph.num_states), repeat=3)))
    states = states[(states == graph.mask_id).any(1)]
    for t in (0.05, 0.4, 0.9):
        sigma_bar = float(noise.total(t))
        log_s = oracle.score_fn(states, torch.full((len(states),), sigma_bar, dtype=torch.float64))
        for x_t, row in zip(states, log_s):
            formula = torch.log(exact_conditional(oracle, x_t)) - math.log(math.expm1(sigma_bar))
            masked = x_t == graph.mask_id
            assert torch.allclose(row[masked, :3], formula[masked], rtol=0, atol=1e-10)
            assert torch.all(row[masked, 3] == 0)
        # the reverse rates out of real-token rows are all 0 (Q[y, x] = 0 for a real x), whatever the ratios there
        real = states != graph.mask_id
        assert float(graph.rate_into(states)[real].abs().sum()) == 0


def time_independent_oracle(oracle: ddlm.SequenceOracle):
    """The oracle's exact scores as a score_fn declaring the time-independent protocol, with a call counter."""
    graph = oracle.graph

    def score_fn(x, sigma_bar):
        score_fn.calls += 1
        score_fn.sequences += x.shape[0]
        f = oracle.score_fn(x, torch.full_like(sigma_bar, math.log(2.0), dtype=torch.float64))  # factor 0 at log 2
        real = x != graph.mask_id
        f[real] = float("-inf")
        f[real.unsqueeze(-1) & torch.nn.functional.one_hot(x, graph.num_states).bool()] = 0.0
        return apply_time_factor(graph, f, x, sigma_bar[:, None])

    score_fn.time_independent = True
    score_fn.calls = score_fn.sequences = 0
    return score_fn


@pytest.mark.parametrize("predictor", ["analytic", "euler", "tau_leaping"])
def test_cache_gives_the_same_draws_with_fewer_network_calls(predictor):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(7))
    runs = {}
    for cache in (True, False):
        score_fn, stats = time_independent_oracle(oracle), {}
        x = sample(score_fn, graph, noise, (16, 3), 64, predictor, generator=torch.Generator().manual_seed(3),
                   progress=False, cache=cache, stats=stats)
        assert stats["network_calls"] == score_fn.calls and stats["cache"] is cache
        assert stats["sequences_scored"] == score_fn.sequences
        runs[cache] = (x, score_fn.calls, score_fn.sequences)
    assert torch.equal(runs[True][0], runs[False][0])
    assert runs[True][1] < runs[False][1] / 2
    assert runs[False][2] == 16 * runs[False][1] and runs[True][2] < 16 * runs[True][1]  # only changed sequences re-scored
    # the default is on for a score_fn that declares the protocol
    stats = {}
    x = sample(time_independent_oracle(oracle), graph, noise, (16, 3), 64, predictor, generator=torch.Generator().manual_seed(3),
               progress=False, stats=stats)
    assert stats["cache"] is True and torch.equal(x, runs[True][0])


def test_time_independent_sampling_reproduces_the_distribution():
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    gen = torch.Generator().manual_seed(11)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    exact_tv = oracle.total_variation(oracle.sample(50_000, gen))
    x = sample(time_independent_oracle(oracle), graph, noise, (50_000, 3), 128, "analytic", generator=gen, progress=False)
    assert oracle.total_variation(x) <= exact_tv + 0.01


def test_cache_bad_input():
    graph = ddlm.Absorbing(3)
    oracle = ddlm.SequenceOracle.random(graph, 2, torch.Generator().manual_seed(0))
    run = lambda score_fn, **kw: sample(score_fn, graph, ddlm.LogLinear(), (4, 2), 4, progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="cache=True needs a score function that declares"):
        run(oracle.score_fn, cache=True)
    with pytest.raises(ValueError, match="cache must be None, True or False"):
        run(oracle.score_fn, cache="yes")
    with pytest.raises(ValueError, match="time_independent"):
        ScoreEvaluator(time_independent_oracle(ddlm.SequenceOracle.random(ddlm.Uniform(3), 2)), ddlm.Uniform(3))


def tiny_config(**overrides):
    return ddlm.DDLMConfig.from_preset("tiny", vocab_size=7, dropout=0.0, time_conditioning=False, **overrides)


def test_config_time_conditioning_values():
    assert ddlm.DDLMConfig().time_conditioning is True
    config = tiny_config()
    assert config.scale_by_sigma is False and config.time_conditioning is False
    with pytest.raises(ValueError, match="time_conditioning=False .* needs process='absorbing'"):
        tiny_config(process="uniform")
    with pytest.raises(ValueError, match="time_conditioning"):
        tiny_config(objective="ar")
    with pytest.raises(ValueError, match="scale_by_sigma=True and time_conditioning=False"):
        tiny_config(scale_by_sigma=True)
    with pytest.raises(ValueError, match="time_conditioning must be true or false"):
        ddlm.DDLMConfig(time_conditioning="no")


def test_time_independent_model_outputs_and_round_trip(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = ddlm.DDLMForDiffusion(tiny_config()).eval()
    assert model.time_independent and not hasattr(model, "time_embed")
    with torch.no_grad():  # a non-zero head, so the outputs are not uniform
        model.lm_head.weight.normal_(0, 0.5)
    x = torch.tensor([[7, 1, 7, 3, 7], [2, 7, 0, 7, 7]])
    masked = x == 7
    outs = {}
    for sigma in (0.01, 0.7, 5.0):
        out = model(x, torch.full((2,), sigma)).double()
        log_p = out[..., :7] + math.log(math.expm1(sigma))
        assert torch.allclose(torch.logsumexp(log_p[masked], -1), torch.zeros(int(masked.sum()), dtype=torch.float64), atol=1e-5)
        assert torch.all(out[masked][:, 7] == 0)
        real = out[~masked]
        assert torch.all(real.gather(-1, x[~masked][:, None]) == 0) and int(torch.isinf(real).sum()) == real.numel() - real.shape[0]
        outs[sigma] = log_p[masked]
    assert torch.allclose(outs[0.01], outs[5.0], atol=1e-5)  # no sigma_bar dependence beyond the factor
    rows = torch.tensor([0, 2, 6])
    assert torch.equal(model(x, torch.full((2,), 0.7), positions=rows), model(x, torch.full((2,), 0.7)).reshape(-1, 8)[rows])
    model.save_pretrained(tmp_path / "ti")
    loaded = AutoModel.from_pretrained(tmp_path / "ti").eval()
    assert isinstance(loaded, ddlm.DDLMForDiffusion) and loaded.config.time_conditioning is False
    assert torch.equal(loaded(x, torch.full((2,), 0.7)), model(x, torch.full((2,), 0.7)))
    # a config.json written before the field existed loads as a time-conditioned model
    ddlm.DDLMForDiffusion(ddlm.DDLMConfig.from_preset("tiny", vocab_size=7)).save_pretrained(tmp_path / "old")
    values = json.loads((tmp_path / "old" / "config.json").read_text())
    values.pop("time_conditioning", None)
    (tmp_path / "old" / "config.json").write_text(json.dumps(values))
    old = ddlm.DDLMForDiffusion.from_pretrained(tmp_path / "old")
    assert old.config.time_conditioning is True and not old.time_independent


def test_time_independent_model_trains_and_its_loss_is_finite():
    torch.manual_seed(0)
    model = ddlm.DDLMForDiffusion(tiny_config())
    x0 = torch.randint(7, (4, 6))
    loss = ddlm.losses.dwdse_loss(model, model.graph, model.noise, x0, generator=torch.Generator().manual_seed(0)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.cond_embed.weight.grad is not None


def test_time_independent_model_sampling_with_and_without_cache():
    torch.manual_seed(0)
    model = ddlm.DDLMForDiffusion(tiny_config()).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    draws = {}
    for cache in (True, False):
        stats = {}
        x = sample(model, model.graph, model.noise, (2, 6), 32, generator=torch.Generator().manual_seed(1), progress=False,
                   cache=cache, stats=stats)
        draws[cache] = (x, stats["network_calls"])
    assert torch.equal(draws[True][0], draws[False][0])
    assert draws[True][1] < draws[False][1]
    assert int(draws[True][0].max()) < 7


def test_a_time_independent_recipe_trains_and_lowers_its_held_out_bound(tmp_path, text_data):
    from ddlm.recipes import recipe_from_dict
    from ddlm.train import train

    from test_train import tiny_recipe

    values = tiny_recipe(tmp_path, text_data, steps=12, eval_every=12, save_every=12, sample_every=12, eval_blocks=8, eval_num_t=8)
    values["model"]["time_conditioning"] = False
    recipe = recipe_from_dict(values)
    assert recipe.model.config(300, 32, "diffusion").time_conditioning is False
    final = train(recipe, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    bounds = {r["step"]: r["eval/bound_per_token"] for r in records if "eval/bound_per_token" in r}
    assert min(bounds) == 0 and bounds[max(bounds)] < bounds[0]
    model = ddlm.DDLMForDiffusion.from_pretrained(final)
    assert model.config.time_conditioning is False and model.time_independent
