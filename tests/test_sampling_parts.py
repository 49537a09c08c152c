"""The sampler made of parts: passing the predictor, decoding and corrector objects to ``sample`` draws what the keywords draw."""

from __future__ import annotations

import math

import pytest
import torch

import ddlm
from ddlm.sampling import (Analytic, Confidence, Decoding, Euler, FirstHitting, GridPredictor, PredictorCorrector, Remask,
                           TauLeaping, Temperature, TopK, TopP, sample)
from ddlm.sampling.decoding import shape_log_weights

ABSORBING = ddlm.SequenceOracle.random(ddlm.Absorbing(3), 5, generator=torch.Generator().manual_seed(0))
UNIFORM = ddlm.SequenceOracle.random(ddlm.Uniform(3), 5, generator=torch.Generator().manual_seed(0))


def draw(oracle, predictor, steps=8, **options):
    return sample(oracle.score_fn, oracle.graph, ddlm.LogLinear(), (6, 5), steps, predictor,
                  generator=torch.Generator().manual_seed(1), progress=False, **options)


@pytest.mark.parametrize("name, part", [("euler", Euler()), ("tau_leaping", TauLeaping()), ("analytic", Analytic()),
                                        ("first_hitting", FirstHitting()), ("confidence", Confidence())])
def test_each_predictor_object_draws_what_its_name_draws(name, part):
    assert torch.equal(draw(ABSORBING, part), draw(ABSORBING, name))
    if name in ("euler", "tau_leaping", "analytic"):
        assert torch.equal(draw(UNIFORM, part), draw(UNIFORM, name))


@pytest.mark.parametrize("options", [dict(threshold=0.5), dict(confidence="margin", unmask_schedule="cosine"),
                                     dict(confidence="entropy", entropy_bound=1.0)])
def test_confidence_options_as_a_part(options):
    assert torch.equal(draw(ABSORBING, Confidence(**options), steps=3), draw(ABSORBING, "confidence", steps=3, **options))


@pytest.mark.parametrize("predictor", ["analytic", "first_hitting", "confidence"])
@pytest.mark.parametrize("keywords, parts", [
    (dict(temperature=0.5), [Temperature(0.5)]),
    (dict(top_k=2, top_p=0.8), [TopK(2), TopP(0.8)]),
    (dict(temperature=0.0), Temperature(0.0)),
    (dict(temperature=0.7, top_k=2, top_p=0.9), Decoding(Temperature(0.7), TopK(2), TopP(0.9))),
])
def test_decoding_transforms_compose_to_the_keyword_draws(predictor, keywords, parts):
    assert torch.equal(draw(ABSORBING, predictor, decoding=parts), draw(ABSORBING, predictor, **keywords))


def test_decoding_is_bit_identical_to_shape_log_weights():
    log_w = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    log_w[::5, 2] = -math.inf
    log_w[7] = -math.inf
    for temperature, top_k, top_p in [(1.0, None, 1.0), (0.3, 3, 1.0), (2.0, None, 0.7), (0.0, 2, 0.5), (1.0, 9, 0.95)]:
        transforms = [t for t, on in [(Temperature(temperature), temperature != 1), (TopK(top_k or 1), top_k is not None),
                                      (TopP(top_p), top_p < 1)] if on]
        assert torch.equal(Decoding(*transforms)(log_w), shape_log_weights(log_w, temperature, top_k, top_p))


@pytest.mark.parametrize("predictor", ["euler", "analytic"])
def test_corrector_parts_draw_what_the_keywords_draw(predictor):
    keywords = dict(remask=0.5, remask_window=(0.8, 0.1), corrector_steps=2, corrector_size=0.5)
    parts = [Remask(0.5, (0.8, 0.1)), PredictorCorrector(2, 0.5)]
    assert torch.equal(draw(ABSORBING, predictor, correctors=parts), draw(ABSORBING, predictor, **keywords))
    assert torch.equal(draw(UNIFORM, Analytic(), correctors=[PredictorCorrector(1)]), draw(UNIFORM, "analytic", corrector_steps=1))


def test_a_user_grid_predictor_plugs_into_the_loop():
    class Greedy(GridPredictor):
        """Analytic, with every unmasking draw at temperature 0."""

        name = "greedy"
        kind = "analytic"

        def step(self, graph, x, log_score, dt, rate, dsigma, **options):
            return super().step(graph, x, log_score, dt, rate, dsigma, **{**options, "decoding": Decoding(Temperature(0))})

    stats = {}
    out = draw(ABSORBING, Greedy(), correctors=[Remask(0.5)], stats=stats)
    assert stats["network_calls"] >= 1 and bool((out < 3).all())
    assert torch.equal(draw(ABSORBING, Greedy(), denoise=False), draw(ABSORBING, "analytic", denoise=False, temperature=0.0))


@pytest.mark.parametrize("options, message", [
    (dict(predictor=Analytic(), threshold=0.5), "options of the Confidence predictor"),
    (dict(predictor="analytic", decoding=[TopK(2)], top_k=2), "not both"),
    (dict(predictor="analytic", correctors=[Remask(0.5)], remask=0.5), "not both"),
    (dict(predictor="analytic", correctors=[Remask(0.5), Remask(0.2)]), "at most one Remask"),
    (dict(predictor="analytic", correctors=["remask"]), "correctors must be a list"),
    (dict(predictor=FirstHitting(), correctors=[PredictorCorrector(1)]), "corrector_steps needs one of the predictors"),
    (dict(predictor=Confidence(), denoise=False), "denoise must be True"),
    (dict(predictor="analytic", decoding=[0.5]), "callables"),
])
def test_parts_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        sample(ABSORBING.score_fn, ABSORBING.graph, ddlm.LogLinear(), (2, 5), 4, progress=False, **options)


def test_parts_check_their_own_arguments_and_graph():
    for make, message in [(lambda: Temperature(-1), "temperature"), (lambda: TopK(0), "top_k"), (lambda: TopP(0), "top_p"),
                          (lambda: Remask(2), "remask"), (lambda: PredictorCorrector(-1), "corrector_steps"),
                          (lambda: Confidence(confidence="best"), "confidence must be one of")]:
        with pytest.raises(ValueError, match=message):
            make()
    for options in (dict(predictor=FirstHitting()), dict(predictor="analytic", decoding=TopK(2)),
                    dict(predictor="analytic", correctors=[Remask(0.5)])):
        with pytest.raises(ValueError, match="absorbing"):
            sample(UNIFORM.score_fn, UNIFORM.graph, ddlm.LogLinear(), (2, 5), 4, progress=False, **options)


@pytest.mark.parametrize("process", ["uniform", "absorbing"])
@pytest.mark.parametrize("kind", ["euler", "tau_leaping", "analytic", "denoise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_steps_a_block_of_rows_at_a_time_draw_what_one_block_draws(monkeypatch, process, kind, dtype):
    """The float64 passes of a step run over blocks of rows (ddlm.core.draws.row_chunks): blocks of one or a few
    rows, and some rows staying, draw the same tokens as all rows in one block."""
    from ddlm.core import draws
    from ddlm.sampling.steps import reverse_step

    graph = ddlm.Uniform(300) if process == "uniform" else ddlm.Absorbing(299)
    gen = torch.Generator().manual_seed(3)
    log_score = (torch.randn(40, 300, generator=gen) * 2 - 4).to(dtype)
    x = torch.randint(0, 299, (40,), generator=gen)
    if graph.mask_id is not None:
        x[::3] = graph.mask_id
    def draw(chunk_elements):
        monkeypatch.setattr(draws, "CHUNK_ELEMENTS", chunk_elements)
        return reverse_step(graph, x, log_score, kind, 0.2, 1.5, 0.3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    whole = draw(1 << 30)
    assert 0 < int((whole != x).sum()) < x.numel()  # some rows move, some stay
    for chunk_elements in (1, 300 * 3, 300 * 7 + 1):
        assert torch.equal(draw(chunk_elements), whole)


def test_row_blocks_are_cache_sized_on_a_cpu_and_large_on_an_accelerator():
    from ddlm.core.draws import row_chunks

    cpu, gpu = row_chunks(1000, 50257, torch.device("cpu")), row_chunks(1000, 50257, torch.device("cuda"))
    assert len(cpu) == 100 and gpu == [(0, 1000)]  # 10 rows of 50257 float64 fit 4 MiB; a GPU takes them in one launch
    assert [r for a, b in cpu for r in range(a, b)] == list(range(1000))
