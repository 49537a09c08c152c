"""Time sampling of the training loss: stratified / antithetic / importance-weighted times are unbiased, cover
every stratum, are one global draw however the batch is split, and resume exactly; bad recipes are refused."""

import functools
import math

import pytest
import torch

import ddlm
from ddlm.likelihood import batch_uniforms, training_times
from ddlm.losses import dwdse_loss
from ddlm.recipes import TrainConfig, recipe_from_dict
from ddlm.train import train
from ddlm.training.objective import micro_batch_uniforms

MODES = [("iid", None), ("stratified", None), ("antithetic", None), ("iid", "power"), ("stratified", "power"), ("antithetic", "power")]


def estimates(f, method, importance, size, reps, t_min, power=2.0, seed=0):
    """reps batch means of f(t) * weight over batches of ``size`` times, Float64[reps]."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(reps, dtype=torch.float64)
    for r in range(reps):
        t, w = training_times(batch_uniforms(size, method, generator), t_min, importance, power)
        out[r] = (f(t) * (1 if w is None else w)).mean()
    return out


@pytest.mark.parametrize("method, importance", MODES)
def test_batch_estimates_are_unbiased_for_a_known_integral(method, importance):
    t_min = 0.05
    f = lambda t: torch.exp(-3 * t) / t.sqrt()  # noqa: E731 - large near t = 0 like the loss integrand
    antiderivative = lambda t: math.sqrt(math.pi / 3) * math.erf(math.sqrt(3 * t))  # noqa: E731
    exact = (antiderivative(1) - antiderivative(t_min)) / (1 - t_min)  # E_{t ~ U[t_min, 1]} f(t)
    values = estimates(f, method, importance, 32, 3000, t_min, power=3.0)
    stderr = values.std() / math.sqrt(values.numel())
    assert abs(values.mean() - exact) < 4 * stderr + 1e-12, (values.mean(), exact, stderr)


def test_stratified_and_antithetic_reduce_the_variance_of_a_smooth_integrand():
    f = lambda t: torch.exp(-3 * t) / t.sqrt()  # noqa: E731
    iid = estimates(f, "iid", None, 32, 2000, 0.05).var()
    assert estimates(f, "stratified", None, 32, 2000, 0.05).var() < 0.05 * iid
    assert estimates(f, "antithetic", None, 32, 2000, 0.05).var() < 0.5 * iid
    assert estimates(f, "iid", "power", 32, 2000, 0.05).var() < iid  # more draws where f is large


@pytest.mark.parametrize("size", [1, 2, 7, 32, 96])
def test_stratified_draws_hold_one_per_stratum_and_antithetic_ones_pair_up(size):
    generator = torch.Generator().manual_seed(size)
    u = batch_uniforms(size, "stratified", generator)
    assert torch.equal(torch.sort(torch.floor(u * size).long()).values, torch.arange(size))
    assert bool(((u >= 0) & (u < 1)).all())
    if size % 2 == 0:
        pairs = batch_uniforms(size, "antithetic", generator).reshape(-1, 2)
        assert torch.equal(pairs.sum(1), torch.ones(size // 2, dtype=torch.float64))
    # the permutation spreads the strata over the slots: slot 0 is not always the lowest stratum
    if size == 32:
        firsts = {int(batch_uniforms(size, "stratified", generator)[0] * size) for _ in range(20)}
        assert len(firsts) > 5


@pytest.mark.parametrize("method", ["stratified", "antithetic"])
def test_the_global_draw_is_the_same_however_the_batch_is_split(method):
    reference = None
    for world, micro in [(1, 32), (1, 4), (2, 16), (2, 2), (4, 8), (8, 4), (32, 1)]:
        cfg = TrainConfig(global_batch_size=32, micro_batch_size=micro, t_sampling=method, seed=3, trackers=["none"])
        slices = [micro_batch_uniforms(cfg, 7, rank, world, "cpu") for rank in range(world)]
        assert all(len(s) == cfg.accumulation_steps(world) for s in slices)
        draw = torch.cat([u for per_rank in slices for u in per_rank])
        reference = draw if reference is None else reference
        assert torch.equal(draw, reference), (world, micro)
    other_step = torch.cat(micro_batch_uniforms(TrainConfig(global_batch_size=32, micro_batch_size=32, t_sampling=method, seed=3,
                                                            trackers=["none"]), 8, 0, 1, "cpu"))
    assert not torch.equal(other_step, reference)
    assert micro_batch_uniforms(TrainConfig(trackers=["none"]), 7, 0, 1, "cpu") is None  # iid: the step generator's draws


@functools.lru_cache(maxsize=None)
def oracle_batch_means(method, importance, seed, reps=300):
    """reps means of the training loss over a batch of 16 sequences (exact ratios, Absorbing(3), L = 3)."""
    graph = ddlm.Absorbing(3)
    oracle = ddlm.SequenceOracle.random(graph, length=3, generator=torch.Generator().manual_seed(1))
    x0 = oracle.sample(16, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(reps):
        t, w = training_times(batch_uniforms(16, method, generator), 0.01, importance)
        values.append(dwdse_loss(oracle.score_fn, graph, ddlm.LogLinear(), x0, 0.01, generator, t=t, weights=w).mean())
    return torch.stack(values)


@pytest.mark.parametrize("method, importance", MODES[1:])
def test_the_training_loss_with_exact_ratios_has_the_iid_expectation(method, importance):
    """Mean of the loss over many batches (exact-ratio oracle, absorbing, L = 3) against the i.i.d. mean;
    each mean's standard error from its 300 batch means, the two compared at 4.5 combined SEs."""
    iid, other = oracle_batch_means("iid", None, 10), oracle_batch_means(method, importance, 11)
    combined = math.sqrt(iid.var() / iid.numel() + other.var() / other.numel())
    assert abs(float(iid.mean() - other.mean())) < 4.5 * combined, (iid.mean(), other.mean(), combined)


@pytest.mark.parametrize("changes, message", [
    ({"t_sampling": "sobol"}, r"t_sampling='sobol'.*one of"),
    ({"t_importance": "loglinear"}, r"t_importance='loglinear'.*null"),
    ({"t_importance": "power", "t_importance_power": 0.0}, r"t_importance_power=0\.0.*positive density"),
    ({"t_importance": "power", "t_importance_power": float("inf")}, r"t_importance_power=inf"),
    ({"t_importance_power": 3.0}, r"t_importance_power applies with train\.t_importance='power'"),
    ({"t_sampling": "antithetic", "global_batch_size": 3, "micro_batch_size": 3}, r"global_batch_size must be even"),
])
def test_bad_time_sampling_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(trackers=["none"], **changes)


def test_an_autoregressive_recipe_refuses_time_sampling():
    recipe = {"tokenizer": {"train_vocab_size": 300}, "data": {"source": "x.txt"},
              "train": {"objective": "ar", "t_sampling": "stratified", "trackers": ["none"]}}
    with pytest.raises(ValueError, match="apply to the diffusion loss"):
        recipe_from_dict(recipe)


def tiny(tmp_path, text_data, tokenizer_dir, output, **train):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text((text_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return recipe_from_dict({
        "model": {"preset": "tiny", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "cond_dim": 16, "time_embed_dim": 16, "dropout": 0.1},
        "tokenizer": {"name": str(tokenizer_dir)},
        "data": {"source": str(corpus), "block_size": 16, "validation_fraction": 0.05, "cache_dir": str(tmp_path / "cache")},
        "train": dict(steps=6, global_batch_size=8, micro_batch_size=4, lr=2e-3, warmup_steps=2, ema=0.9, log_every=1,
                      eval_every=100, eval_blocks=2, eval_num_t=2, sample_every=100, num_samples=1, sample_steps=2, save_every=2,
                      trackers=["none"], output_dir=str(tmp_path / output), **train)})


def step_losses(run):
    import json

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.parametrize("method, importance", [("stratified", None), ("antithetic", "power"), ("iid", "power")])
def test_a_run_interrupted_mid_way_resumes_with_exactly_the_same_losses(tmp_path, text_data, byte_tokenizer, monkeypatch,
                                                                        method, importance):
    import ddlm.train as training

    tokenizer_dir = tmp_path / "tokenizer"
    byte_tokenizer.save_pretrained(tokenizer_dir)
    settings = {"t_sampling": method, "t_importance": importance}
    train(tiny(tmp_path, text_data, tokenizer_dir, "straight", **settings), progress=False)
    real, calls = training.objective_loss, {"n": 0}

    def killed_in_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 8:  # two micro-batches a step
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "objective_loss", killed_in_step_5)
    recipe = tiny(tmp_path, text_data, tokenizer_dir, "killed", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False)
    assert max(step_losses(tmp_path / "killed")) == 4
    monkeypatch.undo()
    train(recipe, resume=True, progress=False)
    resumed, reference = step_losses(tmp_path / "killed"), step_losses(tmp_path / "straight")
    assert sorted(resumed) == list(range(1, 7))
    assert resumed == reference  # float for float
    baseline = tiny(tmp_path, text_data, tokenizer_dir, "iid")  # and the draws did change the losses
    train(baseline, progress=False)
    assert step_losses(tmp_path / "iid") != reference
