"""Class-conditional ratio networks (``DDLMConfig.num_classes``): the null class, label checks, save/load,
and labelled training data with label dropout that resumes exactly."""

import json
import math

import pytest
import torch
from transformers import AutoModel

from ddlm import DDLMConfig, DDLMForDiffusion


def conditional(num_classes=3, **overrides) -> DDLMForDiffusion:
    """A tiny model whose adaLN modulations are random (they start at zero), so every input matters."""
    torch.manual_seed(0)
    model = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=11, num_classes=num_classes, dropout=0.0, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or "lm_head" in name:
                p.normal_(0, 0.2)
    return model


def inputs(batch=4, length=6, states=12):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, states, (batch, length), generator=generator), torch.rand(batch, generator=generator) + 0.1


def test_config_round_trip_and_old_configs_load_unconditional(tmp_path):
    model = conditional(num_classes=2)
    model.save_pretrained(tmp_path / "cond")
    saved = json.loads((tmp_path / "cond" / "config.json").read_text())
    assert saved["num_classes"] == 2
    loaded = AutoModel.from_pretrained(tmp_path / "cond").eval()
    x, sigma_bar = inputs()
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.equal(loaded(x, sigma_bar, class_labels=labels), model(x, sigma_bar, class_labels=labels))
    # a directory written before num_classes existed: the key is absent and the model is unconditional
    plain = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=11))
    plain.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config.pop("num_classes")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = DDLMForDiffusion.from_pretrained(tmp_path / "old")
    assert old.config.num_classes == 0 and old.config.null_class is None
    assert not hasattr(old, "class_embed")
    assert sum(p.numel() for p in old.parameters()) == sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("overrides", [{}, {"time_conditioning": False}, {"process": "uniform"}])
def test_null_class_is_none_and_labels_change_the_scores(overrides):
    model = conditional(**overrides)
    x, sigma_bar = inputs(states=model.config.num_states)
    unlabelled = model(x, sigma_bar)
    assert torch.equal(unlabelled, model(x, sigma_bar, class_labels=torch.full((4,), model.config.null_class)))
    labelled = model(x, sigma_bar, class_labels=torch.tensor([0, 1, 2, 3]))
    differ = (labelled - unlabelled).abs().flatten(1).nan_to_num(0).amax(1)
    assert (differ[:3] > 1e-3).all() and differ[3] == 0  # each real class moves the scores; row 3 is the null class
    # each sequence reads only its own label, and a scalar label is broadcast
    one = model(x[:1], sigma_bar[:1], class_labels=torch.tensor([1]))
    assert torch.allclose(one, model(x, sigma_bar, class_labels=torch.tensor(1))[:1], atol=1e-5)
    # the row-restricted head agrees with the full output under a label
    positions = torch.zeros_like(x, dtype=torch.bool)
    positions[:, ::2] = True
    rows = model(x, sigma_bar, positions=positions, class_labels=torch.tensor([2, 0, 1, 3]))
    full = model(x, sigma_bar, class_labels=torch.tensor([2, 0, 1, 3]))
    assert torch.allclose(rows, full[positions], atol=1e-5)


def test_autoregressive_model_takes_class_labels():
    model = conditional(objective="ar")
    x = torch.randint(0, 11, (3, 5))
    a, b = model(x, class_labels=torch.tensor([0, 0, 0])), model(x, class_labels=torch.tensor([1, 1, 1]))
    assert torch.allclose(a.exp().sum(-1), torch.ones(3, 5), atol=1e-5)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(model(x), model(x, class_labels=torch.tensor([3, 3, 3])))


def test_class_label_errors():
    model = conditional(num_classes=3)
    x, sigma_bar = inputs()
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\].*got 4"):
        model(x, sigma_bar, class_labels=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="got -1"):
        model(x, sigma_bar, class_labels=torch.tensor([-1, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"shape \[batch\] = \[4\]"):
        model(x, sigma_bar, class_labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(x, sigma_bar, class_labels=torch.tensor([0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(x, sigma_bar, class_labels=[0, 1, 2, 3])
    unconditional = DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=11))
    with pytest.raises(ValueError, match="unconditional model"):
        unconditional(x, sigma_bar, class_labels=torch.tensor([0, 0, 0, 0]))
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
            DDLMConfig.from_preset("tiny", vocab_size=11, num_classes=bad)


# ----------------------------------------------------------------------------- labelled data and training


def labelled_recipe(tmp_path, text_data, **train_overrides) -> dict:
    sources = []
    for label, name in enumerate(("tinyshakespeare.txt", "wikitext2.valid.txt")):
        path = tmp_path / f"source{label}.txt"
        path.write_text((text_data / name).read_text(encoding="utf-8")[:25_000], encoding="utf-8")
        sources.append({"source": str(path), "label": label})
    train_section = dict(steps=8, global_batch_size=8, micro_batch_size=4, lr=2e-3, warmup_steps=2, decay="cosine", ema=0.99,
                         log_every=2, eval_every=4, eval_blocks=6, eval_num_t=2, sample_every=100, num_samples=1, sample_steps=2,
                         save_every=2, trackers=["none"], output_dir=str(tmp_path / "run"), label_dropout=0.25)
    train_section.update(train_overrides)
    return {"model": {"preset": "tiny", "hidden_size": 32, "cond_dim": 16, "time_embed_dim": 16, "num_classes": 2},
            "tokenizer": {"train_vocab_size": 300},
            "data": {"sources": sources, "block_size": 16, "validation_fraction": 0.05, "cache_dir": str(tmp_path / "cache")},
            "train": train_section}


def test_labelled_sources_build_labelled_blocks(tmp_path, text_data, byte_tokenizer):
    from ddlm.data import DataConfig, build_datasets

    data = DataConfig(**labelled_recipe(tmp_path, text_data)["data"])
    train_blocks, validation = build_datasets(data, byte_tokenizer, seed=0)
    alone = [build_datasets(DataConfig(source=entry["source"], block_size=16, validation_fraction=0.05), byte_tokenizer)
             for entry in data.sources]
    total = [len(t) + len(v) for t, v in alone]
    assert len(train_blocks) + len(validation) == sum(total)  # each source packed on its own
    labels = torch.cat([train_blocks.labels, validation.labels])
    assert labels.bincount().tolist() == total
    # a block keeps its source's label: shakespeare blocks (label 0) are exactly the blocks of source 0
    shakespeare = {tuple(b.tolist()) for b in torch.cat([alone[0][0][:], alone[0][1][:]])}
    for tokens, label in zip(train_blocks[:], train_blocks.labels):
        assert (tuple(tokens.tolist()) in shakespeare) == (label == 0)
    tokens, batch_labels = next(train_blocks.batches(3, 8, rank=1, world_size=2, seed=5, with_labels=True))
    index = train_blocks.indices(3, 8, seed=5)[4:]
    assert torch.equal(tokens, train_blocks[index]) and torch.equal(batch_labels, train_blocks.labels[index])


def test_label_dropout_statistics():
    from ddlm.training.objective import drop_labels

    labels = torch.arange(40_000) % 3
    for p in (0.0, 0.1, 0.5, 1.0):
        dropped = drop_labels(labels, p, 3, torch.Generator().manual_seed(0))
        null = dropped == 3
        assert torch.equal(dropped[~null], labels[~null])  # kept labels are unchanged
        rate, se = null.double().mean().item(), math.sqrt(p * (1 - p) / labels.numel())
        assert abs(rate - p) <= 4 * se + 1e-12
        for c in range(3):  # independent of the class
            assert abs(null[labels == c].double().mean().item() - p) <= 4 * math.sqrt(p * (1 - p) / (labels == c).sum()) + 1e-12
    again = drop_labels(labels, 0.3, 3, torch.Generator().manual_seed(7))
    assert torch.equal(again, drop_labels(labels, 0.3, 3, torch.Generator().manual_seed(7)))


def test_a_labelled_recipe_trains_and_resumes_exactly(tmp_path, text_data, monkeypatch):
    import ddlm.train as training
    from ddlm.recipes import recipe_from_dict
    from ddlm.train import latest_checkpoint, train

    seen = []
    real = training.objective_loss

    def recording(model, x0, train_cfg, graph, noise, generator, class_labels=None, **kwargs):
        seen.append(class_labels.clone())
        return real(model, x0, train_cfg, graph, noise, generator, class_labels, **kwargs)

    monkeypatch.setattr(training, "objective_loss", recording)
    values = labelled_recipe(tmp_path, text_data, output_dir=str(tmp_path / "straight"))
    final = train(recipe_from_dict(values), progress=False)
    straight = losses(tmp_path / "straight")
    labels = torch.cat(seen)
    assert set(labels.tolist()) == {0, 1, 2}  # both classes and the null class (dropout 0.25 over 64 labels)

    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * 5:  # two micro-batches a step: step 6 crashes, after the checkpoint of step 4
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "objective_loss", crashing)
    values["train"]["output_dir"] = str(tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe_from_dict(values), progress=False)
    assert latest_checkpoint(tmp_path / "crashed").name == "step_00000004"
    monkeypatch.setattr(training, "objective_loss", real)
    train(recipe_from_dict(values), resume=True, progress=False)
    assert losses(tmp_path / "crashed") == straight  # exactly, float for float
    model = DDLMForDiffusion.from_pretrained(final)
    assert model.config.num_classes == 2
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["eval/bound_per_token"]) for r in records if "eval/bound_per_token" in r)


def losses(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.parametrize("change, message", [
    ({"model": {"num_classes": 0}}, r"data.sources carry labels \[0, 1\] but the model is unconditional"),
    ({"model": {"num_classes": 1}}, r"data.sources\[1\].label=1 is out of range for model.num_classes=1"),
    ({"train": {"label_dropout": 1.5}}, r"label_dropout=1.5 \(must be a number in \[0, 1\]"),
    ({"train": {"label_dropout": -0.1}}, r"label_dropout=-0.1"),
    ({"data": {"sources": [{"source": "a.txt", "label": 0}, {"source": "b.txt"}]}}, "a label to every source or to none"),
    ({"data": {"sources": [{"source": "a.txt", "label": -1}]}}, r"sources\[0\].label must be an int >= 0"),
    ({"data": {"sources": [{"path": "a.txt", "label": 0}]}}, r"unknown keys \['path'\]"),
    ({"data": {"sources": []}}, r"sources=\[\] \(must be null, or a non-empty list"),
    ({"data": {"source": "c.txt"}}, "leave data.source unset"),
    ({"data": {"streaming": True}}, "leave data.streaming unset"),
])
def test_labelled_recipe_errors(tmp_path, text_data, change, message):
    from ddlm.recipes import recipe_from_dict

    values = labelled_recipe(tmp_path, text_data)
    for section, fields in change.items():
        values[section].update(fields)
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(values)


def test_unlabelled_sources_and_conditional_model_without_labels(tmp_path, text_data):
    from ddlm.recipes import recipe_from_dict

    values = labelled_recipe(tmp_path, text_data)
    for entry in values["data"]["sources"]:
        del entry["label"]
    with pytest.raises(ValueError, match="model.num_classes=2 needs labelled data"):
        recipe_from_dict(values)
    values["model"]["num_classes"] = 0
    with pytest.raises(ValueError, match="label_dropout applies to class-conditional models"):
        recipe_from_dict(values)
    del values["train"]["label_dropout"]
    recipe = recipe_from_dict(values)  # several sources trained unconditionally
    assert recipe.data.labels is None and recipe.train.label_dropout_rate == 0.1


def test_a_labelled_recipe_trains_an_autoregressive_conditional_model(tmp_path, text_data):
    from ddlm.recipes import recipe_from_dict
    from ddlm.train import train

    values = labelled_recipe(tmp_path, text_data, objective="ar", steps=2, eval_every=2, save_every=2)
    final = train(recipe_from_dict(values), progress=False)
    model = DDLMForDiffusion.from_pretrained(final)
    assert model.config.is_autoregressive and model.config.num_classes == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(losses(tmp_path / "run")) == [1, 2]
    assert all(math.isfinite(r["eval/nll_per_token"]) for r in records if "eval/nll_per_token" in r)
