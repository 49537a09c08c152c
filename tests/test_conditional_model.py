"""Class-conditional ratio networks (``DDLMConfig.num_classes``): the null class, label checks, save/load,
and labelled training data with label dropout that resumes exactly."""

import json

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
