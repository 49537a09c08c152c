"""DDLMConfig / DDLMForDiffusion: outputs, parametrisation, transformers integration, strict loading."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

import ddlm
from ddlm import DDLMConfig, DDLMForDiffusion
from helpers import randomised


def tiny(process="absorbing", **overrides):
    return DDLMConfig.from_preset("tiny", vocab_size=37, process=process, dropout=0.0, **overrides)


def inputs(config, batch=3, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(config.num_states, (batch, length), generator=g), torch.tensor([0.01, 0.7, 4.0][:batch])


@pytest.mark.parametrize("process", ["absorbing", "uniform"])
def test_output_is_float32_log_scores_with_zero_at_the_current_token(process):
    config = tiny(process)
    model = randomised(config)
    x, sigma = inputs(config)
    out = model(x, sigma)
    assert out.shape == (3, 9, config.num_states) and out.dtype == torch.float32
    assert torch.all(out.gather(-1, x[..., None]) == 0)
    assert torch.isfinite(out).all()
    assert model.graph.num_states == config.num_states == 37 + (process == "absorbing")


def test_fresh_absorbing_model_starts_at_the_scale_by_sigma_prior():
    # adaLN-Zero and a zero head: logits 0, so log s = -log(e^sigma_bar - 1) - log N off the current token
    config = tiny()
    model = DDLMForDiffusion(config).eval()
    x, sigma = inputs(config)
    out = model(x, sigma).double()
    expected = -torch.log(torch.expm1(sigma.double())) - math.log(37)
    off = torch.ones_like(out, dtype=torch.bool).scatter(-1, x[..., None], False)
    for b in range(3):
        assert torch.allclose(out[b][off[b]], expected[b].expand(int(off[b].sum())), atol=1e-5)


def test_scale_by_sigma_is_exactly_a_shift_of_the_head():
    with_shift = randomised(tiny())
    without = randomised(tiny(scale_by_sigma=False))
    x, sigma = inputs(with_shift.config)
    shift = torch.log(torch.expm1(sigma.double())) + math.log(37)
    diff = (without(x, sigma) - with_shift(x, sigma)).double()
    off = torch.ones_like(diff, dtype=torch.bool).scatter(-1, x[..., None], False)
    assert torch.allclose(diff, torch.where(off, shift[:, None, None], 0.0), atol=1e-4)


def test_attention_is_bidirectional_and_sigma_conditions_the_output():
    model = randomised(tiny())
    x, sigma = inputs(model.config, batch=1)
    base = model(x, sigma)
    changed = x.clone()
    changed[0, -1] = (x[0, -1] + 1) % 38
    assert not torch.allclose(model(changed, sigma)[0, 0], base[0, 0])  # the first position sees the last
    assert not torch.allclose(model(x, sigma * 2)[0, 0], base[0, 0])


def test_config_is_self_describing_and_validated():
    config = DDLMConfig.from_preset("tiny", vocab_size=10, process="uniform", schedule="geometric", sigma_min=1e-3, sigma_max=5.0)
    assert repr(config.graph()) == repr(ddlm.Uniform(10))
    assert config.noise() == ddlm.Geometric(1e-3, 5.0)
    assert config.scale_by_sigma is False and DDLMConfig(vocab_size=10).scale_by_sigma is True
    with pytest.raises(ValueError, match="process"):
        DDLMConfig(process="masked")
    with pytest.raises(ValueError, match="schedule"):
        DDLMConfig(schedule="cosine")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        DDLMConfig(process="uniform", scale_by_sigma=True)
    with pytest.raises(ValueError, match="heads"):
        DDLMConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="preset"):
        DDLMConfig.from_preset("huge")


@pytest.mark.parametrize("name, millions", [("small", 169.6), ("medium", 424.5)])
def test_presets_have_the_sedd_sizes(name, millions):
    config = DDLMConfig.from_preset(name)  # GPT-2 vocabulary, absorbing: 50258 states
    with torch.device("meta"):
        model = DDLMForDiffusion(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


def test_bad_inputs_are_refused():
    model = randomised(tiny())
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.full((2, 4), 38), torch.ones(2))
    with pytest.raises(ValueError, match="batch, length"):
        model(torch.zeros(4, dtype=torch.long), torch.ones(1))


@pytest.mark.parametrize("tied", [False, True])
def test_save_and_auto_load_round_trip_identically(tmp_path, tied):
    model = randomised(tiny(tie_word_embeddings=tied))
    x, sigma = inputs(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ddlm"
    assert type(AutoConfig.from_pretrained(tmp_path)) is DDLMConfig
    loaded = AutoModel.from_pretrained(tmp_path)  # no trust_remote_code: registered on import
    assert type(loaded) is DDLMForDiffusion and not loaded.training
    assert torch.equal(loaded(x, sigma), model(x, sigma))
    assert (loaded.lm_head.weight is loaded.embed_tokens.weight) == tied


def test_loading_refuses_missing_or_unexpected_weights(tmp_path):
    randomised(tiny()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("final_norm.weight")
    weights["layers.0.extra"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: \['final_norm.weight'\]; unexpected keys: \['layers.0.extra'\]"):
        DDLMForDiffusion.from_pretrained(tmp_path)


def test_loading_a_directory_that_is_not_a_ddlm_model_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        DDLMForDiffusion.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"tokens": 50257, "graph": {"type": "absorb"}}))
    with pytest.raises(ValueError, match="not a ddlm model directory.*SEDD or MDLM checkpoint with .ddlm convert"):
        DDLMForDiffusion.from_pretrained(tmp_path)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomised(tiny())
    model.train()
    x, sigma = inputs(model.config)

    def grads():
        model.zero_grad()
        model(x, sigma).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.layers)
    for a, b in zip(plain, grads()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("process", ["absorbing", "uniform"])
def test_positions_give_the_head_only_on_those_rows(process):
    model = randomised(tiny(process))
    x, sigma = inputs(model.config, length=11)
    full = model(x, sigma)
    chosen = x == model.config.num_states - 1
    chosen[:, ::2] = True
    rows = model(x, sigma, positions=chosen)
    assert model.accepts_positions and rows.shape == (int(chosen.sum()), model.config.num_states)
    assert torch.equal(rows, full[chosen])  # same rows, bit for bit (R >= 16 here; tiny R may differ by BLAS rounding)
    flat = torch.tensor([4, 0, 30])
    assert torch.allclose(model(x, sigma, positions=flat), full.reshape(-1, full.shape[-1])[flat], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="positions must be a Bool tensor of shape"):
        model(x, sigma, positions=chosen[:, :3])
    with pytest.raises(ValueError, match="flat positions must lie in"):
        model(x, sigma, positions=torch.tensor([33]))
    ar = randomised(tiny(objective="ar"))
    with pytest.raises(ValueError, match="takes no positions"):
        ar(x % 37, positions=chosen)
