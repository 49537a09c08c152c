"""Memory-fused and compiled training steps: train.loss_impl (standard | inplace | fused_head) and train.compile give
the same loss sequences and gradients as the standard path, refuse what they cannot do before training, and keep
checkpoints (and exact resume) identical to uncompiled runs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import ddlm.training.objective as objective_module
from ddlm.losses import dwdse_loss
from ddlm.model import DDLMConfig, DDLMForDiffusion
from ddlm.recipes import TrainConfig, recipe_from_dict
from ddlm.train import latest_checkpoint, train
from ddlm.training.objective import CompileUnavailableError

TEST_BACKEND = "aot_eager"  # inductor's first compile of the tiny model takes ~70 s on this 2-core CPU; see compiled_backend


def tiny_values(tmp_path: Path, text_data: Path, name: str, **train_overrides) -> dict:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text((text_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    tokenizer = tmp_path / "first" / "tokenizer"  # the first run trains the BPE, later runs reuse it
    section = dict(steps=4, global_batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=1, ema=0.9, log_every=1,
                   eval_every=100, eval_blocks=1, eval_num_t=2, sample_every=100, num_samples=1, sample_steps=2,
                   save_every=2, trackers=["none"], output_dir=str(tmp_path / name))
    section.update(train_overrides)
    return {"model": {"preset": "tiny", "dropout": 0.1, "num_hidden_layers": 1},
            "tokenizer": {"name": str(tokenizer)} if tokenizer.is_dir() else {"train_vocab_size": 280},
            "data": {"source": str(corpus), "block_size": 16, "validation_fraction": 0.05, "cache_dir": str(tmp_path / "cache")},
            "train": section}


def run(tmp_path, text_data, name, model=None, resume=False, allow=(), **train_overrides) -> Path:
    values = tiny_values(tmp_path, text_data, name, **train_overrides)
    values["model"].update(model or {})
    train(recipe_from_dict(values), resume=resume, progress=False, allow_changes=allow)
    return tmp_path / name


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


@pytest.fixture
def compiled_backend(monkeypatch):
    """The tests compile with aot_eager (dynamo's graph capture and autograd tracing, no code generation): the same
    capture path as inductor in seconds. Inductor itself is measured by benchmarks/train_throughput.py."""
    monkeypatch.setattr(objective_module, "COMPILE_BACKEND", TEST_BACKEND)


@pytest.mark.parametrize("process,tie", [("absorbing", False), ("uniform", True)])
def test_loss_and_gradients_match_the_standard_path(process, tie):
    torch.manual_seed(0)
    config = DDLMConfig.from_preset("tiny", vocab_size=60, process=process, dropout=0.0, max_position_embeddings=16,
                                    num_hidden_layers=1, tie_word_embeddings=tie)
    model = DDLMForDiffusion(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # far from the zero initialisation: every term of the loss matters
    x0 = torch.randint(0, 60, (4, 16))
    results = {}
    for mode in ("standard", "inplace", "fused_head"):
        model.zero_grad()
        loss = dwdse_loss(model, model.graph, model.noise, x0, 1e-3, torch.Generator().manual_seed(1),
                          inplace=mode == "inplace", head=model if mode == "fused_head" else None).mean()
        loss.backward()
        results[mode] = loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    reference, grads = results["standard"]
    for mode in ("inplace", "fused_head"):
        value, other = results[mode]
        assert value == pytest.approx(reference, rel=1e-6)
        assert other.keys() == grads.keys()
        for name, grad in grads.items():
            scale = grad.abs().max().clamp_min(1e-12)
            assert ((other[name] - grad).abs().max() / scale).item() < 1e-5, (mode, name)


def test_training_loss_sequences_match(tmp_path, text_data):
    standard = losses(run(tmp_path, text_data, "first"))
    assert len(standard) == 4 and all(v > 0 for v in standard)
    for mode in ("inplace", "fused_head"):
        other = losses(run(tmp_path, text_data, mode, loss_impl=mode))
        assert other == pytest.approx(standard, rel=1e-5), mode
    conditional = {"num_classes": 2}  # a class-conditional model: the labels travel through the fused path too
    labelled = tmp_path / "labelled.txt"
    labelled.write_text((tmp_path / "corpus.txt").read_text()[:15_000])
    for mode in ("standard", "fused_head"):
        values = tiny_values(tmp_path, text_data, f"cond-{mode}", loss_impl=mode)
        values["model"].update(conditional)
        values["data"].pop("source")
        values["data"]["sources"] = [{"source": str(tmp_path / "corpus.txt"), "label": 0}, {"source": str(labelled), "label": 1}]
        train(recipe_from_dict(values), progress=False)
    assert losses(tmp_path / "cond-fused_head") == pytest.approx(losses(tmp_path / "cond-standard"), rel=1e-5)


def test_compiled_run_matches_eager_and_resumes_exactly(tmp_path, text_data, compiled_backend):
    no_dropout = {"dropout": 0.0}  # a compiled graph may draw dropout masks differently; the comparison is of the arithmetic
    eager = run(tmp_path, text_data, "first", model=no_dropout)
    compiled = run(tmp_path, text_data, "compiled", model=no_dropout, compile=True)
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    saved = weights(latest_checkpoint(compiled) / "state.safetensors")
    assert saved.keys() == weights(latest_checkpoint(eager) / "state.safetensors").keys()
    assert not any("_orig_mod" in key for key in saved)
    # stop after 2 steps, resume to 4: float-equal to the uninterrupted compiled run
    resumed = run(tmp_path, text_data, "resumed", model=no_dropout, compile=True, steps=2)
    run(tmp_path, text_data, "resumed", model=no_dropout, compile=True, resume=True, allow={"train.steps"})
    assert losses(resumed) == losses(compiled)
    # an uncompiled run resumes a compiled run's checkpoint (the switch is named, as any resumable change)
    mixed = run(tmp_path, text_data, "mixed", model=no_dropout, compile=True, steps=2)
    run(tmp_path, text_data, "mixed", model=no_dropout, compile=False, resume=True, allow={"train.steps", "train.compile"})
    assert losses(mixed) == pytest.approx(losses(compiled), rel=1e-5)


def test_bad_switches_are_refused_before_training(tmp_path, text_data, monkeypatch):
    values = tiny_values(tmp_path, text_data, "bad")
    for mode in ("fused_head", "inplace"):
        ar = json.loads(json.dumps(values))
        ar["train"].update(objective="ar", loss_impl=mode)
        with pytest.raises(ValueError, match=f"train.loss_impl='{mode}' applies to the diffusion loss"):
            recipe_from_dict(ar)
    independent = json.loads(json.dumps(values))
    independent["model"]["time_conditioning"] = False
    independent["train"]["loss_impl"] = "fused_head"
    with pytest.raises(ValueError, match="fused_head' needs a time-conditioned model"):
        recipe_from_dict(independent)
    independent["train"]["loss_impl"] = "inplace"
    recipe_from_dict(independent)
    with pytest.raises(ValueError, match="loss_impl='fused'"):
        TrainConfig(loss_impl="fused")
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")
    model = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=20, objective="ar", max_position_embeddings=8))
    with pytest.raises(ValueError, match="output_hidden needs a time-conditioned diffusion model"):
        model(torch.zeros(1, 8, dtype=torch.long), output_hidden=True)

    compiled = json.loads(json.dumps(values))
    compiled["train"]["compile"] = True
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(CompileUnavailableError, match="does not support this platform.*train.compile=false"):
        train(recipe_from_dict(compiled), progress=False)
    assert latest_checkpoint(tmp_path / "bad") is None
    monkeypatch.undo()

    def failing_backend(graph, example_inputs):
        raise RuntimeError("no code generator here")

    monkeypatch.setattr(objective_module, "COMPILE_BACKEND", failing_backend)
    compiled["train"]["output_dir"] = str(tmp_path / "bad-backend")
    with pytest.raises(CompileUnavailableError, match="failed on the first training step.*no code generator.*train.compile=false"):
        train(recipe_from_dict(compiled), progress=False)


def test_auto_picks_the_leanest_implementation_that_applies():
    from types import SimpleNamespace

    from ddlm.training.objective import resolved_loss_impl

    auto, ar = TrainConfig(), TrainConfig(objective="ar")
    conditioned = DDLMConfig.from_preset("tiny", vocab_size=50)
    independent = DDLMConfig.from_preset("tiny", vocab_size=50, time_conditioning=False)
    x0_predictor = DDLMConfig.from_preset("tiny", vocab_size=50, predict_x0=True)
    assert auto.loss_impl == "auto"
    assert resolved_loss_impl(auto, conditioned) == "fused_head"
    assert resolved_loss_impl(auto, independent) == resolved_loss_impl(auto, x0_predictor) == "inplace"
    assert resolved_loss_impl(auto, conditioned, distributed="FSDP") == "inplace"
    assert resolved_loss_impl(auto, conditioned, sft=True) == "standard"
    assert resolved_loss_impl(ar, DDLMConfig.from_preset("tiny", vocab_size=50, objective="ar")) == "standard"
    assert resolved_loss_impl(auto, SimpleNamespace(family="llada")) == "standard"  # a wrapped open-weight network
    assert resolved_loss_impl(TrainConfig(loss_impl="standard"), conditioned) == "standard"  # explicit values stay


def test_the_default_trains_with_the_fused_head_and_resumes_what_a_checkpoint_used(tmp_path, text_data):
    from ddlm.train import load_checkpoint

    fused = run(tmp_path, text_data, "first", steps=2)
    assert load_checkpoint(latest_checkpoint(fused))[1]["loss_impl"] == "fused_head"
    independent = run(tmp_path, text_data, "independent", model={"time_conditioning": False}, steps=2)
    assert load_checkpoint(latest_checkpoint(independent))[1]["loss_impl"] == "inplace"
    # a run recorded with the old default (standard) resumes under 'auto' without a recipe change and keeps standard
    old = run(tmp_path, text_data, "old", steps=2, loss_impl="standard")
    resumed = run(tmp_path, text_data, "old", resume=True, allow={"train.steps"}, steps=4)
    assert load_checkpoint(latest_checkpoint(resumed))[1]["loss_impl"] == "standard"
    assert losses(resumed) == losses(run(tmp_path, text_data, "straight", steps=4, loss_impl="standard"))
    assert old == resumed
