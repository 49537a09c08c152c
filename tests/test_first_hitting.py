"""First-hitting sampling driven by exact ratios reproduces known (and conditional) distributions."""

import pytest
import torch

import ddlm
from helpers import conditional_oracle
from ddlm.sampling import sample

NUM = 50_000


@pytest.mark.parametrize("noise", [ddlm.LogLinear(), ddlm.Geometric()], ids=lambda n: type(n).__name__)
def test_first_hitting_reproduces_a_known_distribution(noise):
    graph = ddlm.Absorbing(3)
    gen = torch.Generator().manual_seed(11)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    exact_tv = oracle.total_variation(oracle.sample(NUM, gen))
    stats = {}
    x = sample(oracle.score_fn, graph, noise, (NUM, 3), 1, "first_hitting", generator=gen, progress=False, stats=stats)
    assert x.shape == (NUM, 3) and int(x.max()) < graph.num_tokens
    assert oracle.total_variation(x) <= exact_tv + 0.01
    assert stats["network_calls"] == 3  # one call per event: L events for every sequence


@pytest.mark.parametrize("fixed_positions", [[0], [0, 2]], ids=["prompt", "infill"])
def test_first_hitting_with_clamped_positions_gives_the_conditional(fixed_positions):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    gen = torch.Generator().manual_seed(12)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    tokens = torch.tensor([1, 0, 2])
    conditional = conditional_oracle(oracle, tokens, fixed_positions)
    num = 20_000
    fixed = torch.zeros(num, 3, dtype=torch.bool)
    fixed[:, fixed_positions] = True
    x_init = tokens.expand(num, 3).clone()
    stats = {}
    x = sample(oracle.score_fn, graph, noise, (num, 3), 1, "first_hitting", generator=gen, x_init=x_init, fixed=fixed,
               progress=False, stats=stats)
    assert torch.equal(x[fixed], x_init[fixed])
    assert stats["network_calls"] == 3 - len(fixed_positions)
    exact_tv = conditional.total_variation(conditional.sample(num, gen))
    assert conditional.total_variation(x) <= exact_tv + 0.01


def test_first_hitting_without_denoising_leaves_the_masks_of_t_min():
    """Stopping at t_min keeps each position masked with probability m(t_min) / m(1) = t_min (LogLinear, all masked at t = 1)."""
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    gen = torch.Generator().manual_seed(13)
    oracle = ddlm.SequenceOracle.random(graph, 3, gen)
    x = sample(oracle.score_fn, graph, noise, (20_000, 3), 1, "first_hitting", denoise=False, t_min=0.3, generator=gen, progress=False)
    masked = (x == graph.mask_id).double().mean().item()
    assert abs(masked - 0.3) < 4 * (0.3 * 0.7 / 60_000) ** 0.5


def test_first_hitting_is_same_seed_same_samples_and_shows_calls(capsys):
    graph, noise = ddlm.Absorbing(3), ddlm.LogLinear()
    oracle = ddlm.SequenceOracle.random(graph, 3, torch.Generator().manual_seed(0))
    a = sample(oracle.score_fn, graph, noise, (32, 3), 1, "first_hitting", generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(oracle.score_fn, graph, noise, (32, 3), 1, "first_hitting", generator=torch.Generator().manual_seed(1), progress=True)
    assert torch.equal(a, b)
    err = capsys.readouterr().err
    assert "sampling (first_hitting)" in err and "calls=3" in err


def test_first_hitting_refuses_a_uniform_process():
    graph = ddlm.Uniform(3)
    oracle = ddlm.SequenceOracle.random(graph, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="predictor='first_hitting' needs an absorbing process.*'euler', 'tau_leaping', 'analytic'"):
        sample(oracle.score_fn, graph, ddlm.Geometric(), (4, 2), 4, "first_hitting", progress=False)


def test_first_hitting_with_a_time_independent_model_through_the_pipeline():
    from ddlm.pipeline import DiffusionPipeline

    class Tokens:  # the pipeline only needs len() and decode() of a tokenizer here
        def __len__(self):
            return 7

        def decode(self, ids, **kwargs):
            return " ".join(map(str, ids))

    torch.manual_seed(0)
    model = ddlm.DDLMForDiffusion(ddlm.DDLMConfig.from_preset("tiny", vocab_size=7, time_conditioning=False))
    pipe = DiffusionPipeline(model, Tokens())
    stats = {}
    ids = pipe.sample(3, 5, predictor="first_hitting", seed=0, progress=False, stats=stats)
    assert ids.shape == (3, 5) and int(ids.max()) < 7 and stats["network_calls"] == 5
    fixed = torch.tensor([True, False, False, False, True])
    ids = pipe.sample(2, 5, predictor="first_hitting", x_init=torch.tensor([1, 7, 7, 7, 2]), fixed=fixed, seed=0, progress=False,
                      stats=stats)
    assert torch.equal(ids[:, [0, 4]], torch.tensor([[1, 2], [1, 2]])) and stats["network_calls"] == 3
