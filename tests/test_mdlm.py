"""MDLM checkpoints (hub layout and Lightning .ckpt) convert to ``DDLMForDiffusion`` with the same outputs.

The reference is MDLM's DiT forward pass and SUBS parameterisation, and its continuous-time NELBO
under the log-linear schedule, re-stated below from their description over MDLM-layout weights
(``backbone.*``); it shares no code with ``ddlm.models``.
"""

import json
import math
import os
import shlex
import sys
import types

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ddlm.cli import main
from ddlm.losses import dse, dwdse
from ddlm.models import DDLMConfig, DDLMForDiffusion
from ddlm.models.mdlm import convert_mdlm, is_mdlm_config, is_mdlm_source, read_mdlm
from ddlm.models.sedd import safe_torch_load

HIDDEN, BLOCKS, HEADS, COND, STATES, LENGTH = 32, 2, 4, 16, 12, 64  # STATES: 11 tokens and the mask (id 11)
MASK = STATES - 1
EPS = 1e-3  # MDLM's LogLinearNoise default
NEG_INFINITY = -1e6  # the "minus infinity" MDLM's SUBS adds


# ---------------------------------------------------------------- MDLM layout and reference


def norm(dim):
    return nn.LayerNorm(dim, bias=False)


class BlockLayout(nn.Module):
    """A DDiT block's parameters in MDLM's definition order (no forward pass)."""

    def __init__(self):
        super().__init__()
        self.norm1 = norm(HIDDEN)
        self.attn_qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.attn_out = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.norm2 = norm(HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU("tanh"), nn.Linear(4 * HIDDEN, HIDDEN))
        self.adaLN_modulation = nn.Linear(COND, 6 * HIDDEN)


class MDLMLayout(nn.Module):
    """MDLM's module tree under ``backbone`` (names, shapes, order), every tensor random."""

    def __init__(self, seed, dtype=torch.float32):
        super().__init__()
        net = self.backbone = nn.Module()
        net.vocab_embed = nn.Module()
        net.vocab_embed.embedding = nn.Parameter(torch.empty(STATES, HIDDEN))
        net.sigma_map = nn.Module()
        net.sigma_map.mlp = nn.Sequential(nn.Linear(256, COND), nn.SiLU(), nn.Linear(COND, COND))
        net.rotary_emb = nn.Module()
        head_dim = HIDDEN // HEADS
        net.rotary_emb.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        net.blocks = nn.ModuleList(BlockLayout() for _ in range(BLOCKS))
        net.output_layer = nn.Module()
        net.output_layer.norm_final = norm(HIDDEN)
        net.output_layer.linear = nn.Linear(HIDDEN, STATES)
        net.output_layer.adaLN_modulation = nn.Linear(COND, 2 * HIDDEN)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(("norm" in name) + 0.2 * torch.randn(p.shape, generator=gen))
        self.to(dtype)  # the rotary buffer stays the fp32 frequencies, as MDLM's model.double() keeps them


def layer_norm(x, weight):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5) * weight


def linear(x, w, b=None):
    return x @ w.T + (0 if b is None else b)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def dit_logits(state, x, sigma):
    """MDLM's DiT: x Long[B, L], sigma [B] (the total noise; zeros without time conditioning) -> logits
    [B, L, STATES] (float64; the 256 [cos | sin] sigma features in float32, as MDLM computes them)."""
    w = {k.removeprefix("backbone."): v.double() for k, v in state.items()}
    batch, length = x.shape
    head_dim = HIDDEN // HEADS
    args = sigma.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    features = torch.cat([torch.cos(args), torch.sin(args)], -1).double()
    hidden = torch.nn.functional.silu(linear(features, w["sigma_map.mlp.0.weight"], w["sigma_map.mlp.0.bias"]))
    c = torch.nn.functional.silu(linear(hidden, w["sigma_map.mlp.2.weight"], w["sigma_map.mlp.2.bias"]))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), w["rotary_emb.inv_freq"])
    angles = torch.cat([angles, angles], -1)[:, None]

    def rotary(t):  # rotate-half on [B, L, heads, d]
        first, second = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        return t * angles.cos() + torch.cat([-second, first], -1) * angles.sin()

    h = w["vocab_embed.embedding"][x]
    for i in range(BLOCKS):
        p = f"blocks.{i}."
        shift1, scale1, gate1, shift2, scale2, gate2 = linear(c, w[p + "adaLN_modulation.weight"],
                                                              w[p + "adaLN_modulation.bias"]).chunk(6, -1)
        a = modulate(layer_norm(h, w[p + "norm1.weight"]), shift1, scale1)
        qkv = linear(a, w[p + "attn_qkv.weight"]).reshape(batch, length, 3, HEADS, head_dim)
        q, k, v = rotary(qkv[:, :, 0]), rotary(qkv[:, :, 1]), qkv[:, :, 2]
        attention = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim), -1)
        h = h + gate1[:, None] * linear(torch.einsum("bhqk,bkhd->bqhd", attention, v).reshape(batch, length, HIDDEN),
                                        w[p + "attn_out.weight"])
        m = gelu_tanh(linear(modulate(layer_norm(h, w[p + "norm2.weight"]), shift2, scale2),
                             w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        h = h + gate2[:, None] * linear(m, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
    shift, scale = linear(c, w["output_layer.adaLN_modulation.weight"], w["output_layer.adaLN_modulation.bias"]).chunk(2, -1)
    return linear(modulate(layer_norm(h, w["output_layer.norm_final.weight"]), shift, scale),
                  w["output_layer.linear.weight"], w["output_layer.linear.bias"])


def subs_log_probs(state, x, sigma, time_conditioning):
    """MDLM's SUBS output log p(x0 | x_t) [B, L, STATES]: sigma replaced by zeros without time conditioning;
    the mask's logit pushed to NEG_INFINITY, normalised; an unmasked position carries its token (0 there,
    NEG_INFINITY elsewhere)."""
    logits = dit_logits(state, x, sigma if time_conditioning else torch.zeros_like(sigma))
    logits[..., MASK] += NEG_INFINITY
    log_p = logits - torch.logsumexp(logits, -1, keepdim=True)
    unmasked = x != MASK
    log_p[unmasked] = NEG_INFINITY
    log_p[unmasked, x[unmasked]] = 0.0
    return log_p


def loglinear(t):
    """MDLM's LogLinearNoise: (sigma(t), dsigma/dt)."""
    return -torch.log1p(-(1 - EPS) * t), (1 - EPS) / (1 - (1 - EPS) * t)


# ---------------------------------------------------------------- writers


def hub_config(**overrides):
    return {"model_type": "mdlm", "architectures": ["MDLM"], "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig",
            "AutoModelForMaskedLM": "modeling_mdlm.MDLM"}, "vocab_size": STATES, "model_length": LENGTH,
            "hidden_dim": HIDDEN, "cond_dim": COND, "n_blocks": BLOCKS, "n_heads": HEADS, "dropout": 0.1,
            "time_conditioning": False, "return_dict": False, "torch_dtype": "float32", **overrides}


def write_hub(directory, state, weights="safetensors", config=None):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config or hub_config()))
    if weights == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def run_config(**overrides):
    model = {"name": "tiny", "type": "ddit", "hidden_size": HIDDEN, "cond_dim": COND, "length": LENGTH, "n_blocks": BLOCKS,
             "n_heads": HEADS, "scale_by_sigma": True, "dropout": 0.1, "tie_word_embeddings": False}
    return {"mode": "train", "diffusion": "absorbing_state", "backbone": "dit", "parameterization": "subs",
            "time_conditioning": False, "T": 0, "subs_masking": False, "model": model,
            "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
            "data": {"train": "openwebtext", "tokenizer_name_or_path": "gpt2"},
            "training": {"ema": 0.9999, "antithetic_sampling": True, "sampling_eps": 1e-3}, **overrides}


def write_run(run, layout, ema_layout, config=None, hyper_parameters=None):
    """An MDLM run dir: ``<run>/checkpoints/last.ckpt`` (Lightning's dict, with ``hyper_parameters`` if given) and its
    hydra config."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or run_config()))
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    optimizer = torch.optim.AdamW(layout.parameters(), lr=3e-4)
    shadow = [p.detach().clone() for p in ema_layout.parameters()]
    torch.save({"epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.2.1", "state_dict": layout.state_dict(),
                "ema": {"decay": 0.9999, "num_updates": 3, "shadow_params": shadow},
                "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [], "callbacks": {},
                **({"hyper_parameters": hyper_parameters} if hyper_parameters else {})}, path)
    return path


def draws(seed, batch=4, length=9):
    """x_t with masked and unmasked positions, and a sigma_bar [batch] (float64)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, MASK, (batch, length), generator=gen)
    x[torch.rand(batch, length, generator=gen) < 0.5] = MASK
    return x, torch.tensor([0.01, 0.7, 2.0, 5.0], dtype=torch.float64)[:batch]


def assert_matches_subs(model, state, seed=0, tol=1e-5):
    """ddlm's log-scores = SUBS log p - log(e^sigma_bar - 1) at masked positions, 0 at the current token (a state's
    ratio to itself); -inf where SUBS has NEG_INFINITY."""
    x, sigma = draws(seed)
    with torch.no_grad():
        got = model(x, sigma.to(model.dtype)).double()
    log_p = subs_log_probs(state, x, sigma.to(model.dtype), model.config.time_conditioning)
    want = log_p - torch.where(x == MASK, torch.log(torch.expm1(sigma))[:, None], 0.0)[..., None]
    want.scatter_(-1, x[..., None], 0.0)
    impossible = want < NEG_INFINITY / 2
    assert got.shape == want.shape == (4, 9, STATES)
    assert torch.isneginf(got[impossible]).all() and torch.isfinite(got[~impossible]).all()
    assert want[~impossible].std() > 0.5  # a comparison of substance
    torch.testing.assert_close(got[~impossible], want[~impossible], rtol=tol, atol=tol)


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("weights, timed", [("safetensors", False), ("bin", False), ("safetensors", True)])
def test_hub_layout_converts_to_subs_log_scores(tmp_path, weights, timed):
    state = MDLMLayout(seed=1).state_dict()
    source = write_hub(tmp_path / "mdlm", state, weights, hub_config(time_conditioning=timed))
    assert is_mdlm_source(source)
    model = convert_mdlm(source, tmp_path / "out")
    config = model.config
    assert (config.vocab_size, config.process, config.schedule, config.eps, config.time_conditioning, config.predict_x0) == (
        STATES - 1, "absorbing", "loglinear", EPS, timed, True)
    assert model.time_independent is not timed
    assert model.dtype == torch.float32 and not model.training
    assert_matches_subs(model, state)
    assert_matches_subs(DDLMForDiffusion.from_pretrained(tmp_path / "out"), state, seed=1)
    assert set(json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]) == {"config.json", "model.safetensors"}


@pytest.mark.parametrize("timed", [False, True])
def test_float64_forward_matches_to_1e_12(tmp_path, timed):
    state = MDLMLayout(seed=3, dtype=torch.float64).state_dict()
    model = read_mdlm(write_hub(tmp_path / "mdlm", state, config=hub_config(time_conditioning=timed))).double()
    assert model.dtype == torch.float64
    for seed in range(3):
        assert_matches_subs(model, state, seed=seed, tol=1e-12)


@pytest.mark.parametrize("timed", [False, True])
def test_bound_equals_mdlm_continuous_time_nelbo(tmp_path, timed):
    """sigma(t) * sum_i DSE_i = MDLM's integrand sum_i -log p(x0_i | x_t) dsigma / expm1(sigma) for the same draws."""
    state = MDLMLayout(seed=4, dtype=torch.float64).state_dict()
    model = read_mdlm(write_hub(tmp_path / "mdlm", state, config=hub_config(time_conditioning=timed)))
    gen = torch.Generator().manual_seed(5)
    batch, length = 6, 16
    x0 = torch.randint(0, MASK, (batch, length), generator=gen)
    u = (torch.rand(batch, generator=gen, dtype=torch.float64) + torch.arange(batch, dtype=torch.float64)) / batch  # antithetic
    t = (1 - EPS) * u + EPS
    sigma, dsigma = loglinear(t)
    x_t = torch.where(torch.rand(batch, length, generator=gen, dtype=torch.float64) < -torch.expm1(-sigma)[:, None], MASK, x0)
    assert 0 < (x_t == MASK).sum() < x_t.numel()
    log_p = subs_log_probs(state, x_t, sigma, timed).gather(-1, x0[..., None])[..., 0]
    nelbo = (-log_p * (dsigma / torch.expm1(sigma))[:, None]).sum(-1)
    sigma_bar = model.noise.total(t)
    torch.testing.assert_close(sigma_bar, sigma, rtol=1e-15, atol=0)
    with torch.no_grad():
        bound = model.noise.rate(t) * dse(model(x_t, sigma_bar), x_t, x0, sigma_bar[:, None], model.graph).sum(-1)
    assert bound.dtype == torch.float64 and nelbo.min() > 0
    torch.testing.assert_close(bound, nelbo, rtol=1e-10, atol=0)
    # ddlm's own integrand (ddlm.losses.dwdse, which draws x_t itself) against MDLM's on the x_t it drew
    with torch.no_grad():
        integrand = dwdse(model, model.graph, model.noise, x0, t, torch.Generator().manual_seed(7))
    x_t = model.graph.sample_transition(x0, sigma_bar[:, None], generator=torch.Generator().manual_seed(7))
    assert ((x_t == x0) | (x_t == MASK)).all()
    log_p = subs_log_probs(state, x_t, sigma, timed).gather(-1, x0[..., None])[..., 0]
    torch.testing.assert_close(integrand, (-log_p * (dsigma / torch.expm1(sigma))[:, None]).sum(-1), rtol=1e-10, atol=0)


def test_lightning_checkpoint_loads_ema_by_default_and_raw_weights_on_request(tmp_path):
    raw, ema = MDLMLayout(seed=1), MDLMLayout(seed=2)
    path = write_run(tmp_path / "run", raw, ema)
    assert is_mdlm_source(path)
    ema_state = {**raw.state_dict(), **{k: v for k, v in ema.state_dict().items() if "inv_freq" not in k}}
    assert_matches_subs(read_mdlm(path), ema_state)
    assert_matches_subs(read_mdlm(path, ema=False), raw.state_dict())
    main(["convert", str(path), str(tmp_path / "ema")])
    main(["convert", "mdlm", str(path), str(tmp_path / "raw"), "--no-ema"])
    assert_matches_subs(DDLMForDiffusion.from_pretrained(tmp_path / "ema"), ema_state)
    assert_matches_subs(DDLMForDiffusion.from_pretrained(tmp_path / "raw"), raw.state_dict())
    timed = read_mdlm(write_run(tmp_path / "timed", raw, ema, config=run_config(time_conditioning=True)))
    assert timed.config.time_conditioning and timed.config.predict_x0
    assert_matches_subs(timed, ema_state)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["ema"]["shadow_params"].pop()
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="shadow_params has 29 tensors, expected 30"):
        read_mdlm(path)


def test_convert_command_detects_the_hub_layout(tmp_path, capsys):
    state = MDLMLayout(seed=2).state_dict()
    main(["convert", str(write_hub(tmp_path / "mdlm", state)), str(tmp_path / "out")])
    assert "absorbing process over 11 tokens, loglinear schedule, 2 x 32" in capsys.readouterr().out
    assert_matches_subs(DDLMForDiffusion.from_pretrained(tmp_path / "out"), state)
    sedd = {"tokens": STATES - 1, "graph": {"type": "absorb"}, "noise": {"type": "loglinear"},  # the same DiT as SEDD
            "model": {"hidden_size": HIDDEN, "n_heads": HEADS, "n_blocks": BLOCKS, "cond_dim": COND, "dropout": 0.1,
                      "scale_by_sigma": True}}
    sedd_state = {key.removeprefix("backbone."): value for key, value in state.items()}
    main(["convert", str(write_hub(tmp_path / "sedd", sedd_state, config=sedd)), str(tmp_path / "sedd_out")])
    converted = DDLMForDiffusion.from_pretrained(tmp_path / "sedd_out").config
    assert converted.time_conditioning and converted.scale_by_sigma and not converted.predict_x0


def test_sources_are_recognised(tmp_path):
    write_hub(tmp_path / "by_architecture", {}, "bin", config={**hub_config(), "model_type": "mdlm_custom"})
    assert is_mdlm_config({"model_type": "MDLM"}) and not is_mdlm_config({"model_type": "ddlm", "architectures": "MDLM"})
    (tmp_path / "sedd").mkdir()
    (tmp_path / "sedd" / "config.json").write_text(json.dumps({"tokens": 11, "graph": {"type": "absorb"}}))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[not json")
    (tmp_path / "run.pth").write_bytes(b"")
    assert is_mdlm_source(tmp_path / "by_architecture")
    for other in ("sedd", "bad", "run.pth", "missing"):
        assert not is_mdlm_source(tmp_path / other)


# ---------------------------------------------------------------- refusals


def cli_error(capsys, argv):
    """The exit status and the one stderr line of a failing ``ddlm`` command."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return exit_info.value.code, lines[0]


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path, capsys):
    state = dict(MDLMLayout(seed=1).state_dict())
    del state["backbone.blocks.1.attn_out.weight"]
    del state["backbone.sigma_map.mlp.2.bias"]
    state["backbone.blocks.0.attn_bias"] = torch.zeros(HIDDEN)
    state["backbone.blocks.1.mlp.2.bias"] = torch.zeros(HIDDEN + 1)
    source = write_hub(tmp_path / "mdlm", state)
    code, line = cli_error(capsys, ["convert", str(source), str(tmp_path / "out")])
    assert code == 2 and line.startswith("ddlm convert: error: MDLM checkpoint does not match the model")
    for name in ("backbone.blocks.1.attn_out.weight", "backbone.sigma_map.mlp.2.bias", "backbone.blocks.0.attn_bias",
                 "backbone.blocks.1.mlp.2.bias"):
        assert name in line
    assert not (tmp_path / "out").exists()


class CodePayload:
    """Pickles as a call to os.system: what weights_only=False would run on load."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunObject:
    """Stands for the objects Lightning pickles into hyper_parameters (MDLM's omegaconf config, its tokenizer)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def lightning_hyper_parameters(monkeypatch, marker):
    """MDLM's save_hyperparameters() content: objects of a class in a module that is gone once saved, and a payload."""
    module = types.ModuleType("mdlm_run_objects")
    module.RunObject = RunObject
    monkeypatch.setattr(RunObject, "__module__", module.__name__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return {"config": RunObject(model={"hidden_size": HIDDEN}, hook=CodePayload(f"echo pwned > {shlex.quote(str(marker))}")),
            "tokenizer": RunObject(name="gpt2")}


def test_pickled_hyper_parameters_stay_inert_and_weights_load(tmp_path, monkeypatch, capsys):
    raw, ema = MDLMLayout(seed=1), MDLMLayout(seed=2)
    marker = tmp_path / "pwned"
    with monkeypatch.context() as m:
        path = write_run(tmp_path / "run", raw, ema, hyper_parameters=lightning_hyper_parameters(m, marker))
    assert "mdlm_run_objects" not in sys.modules
    with pytest.raises(ValueError, match="refused .* not a plain tensor checkpoint"):
        safe_torch_load(path)  # what every other pickle still gets
    ema_state = {**raw.state_dict(), **{k: v for k, v in ema.state_dict().items() if "inv_freq" not in k}}
    assert_matches_subs(read_mdlm(path), ema_state)
    assert_matches_subs(read_mdlm(path, ema=False), raw.state_dict())
    main(["convert", str(path), str(tmp_path / "out")])
    assert_matches_subs(DDLMForDiffusion.from_pretrained(tmp_path / "out"), ema_state)
    assert not marker.exists() and "mdlm_run_objects" not in sys.modules
    capsys.readouterr()
    hub = tmp_path / "hub"
    write_hub(hub, raw.state_dict(), "bin")
    torch.save({**raw.state_dict(), "hook": CodePayload(f"touch {shlex.quote(str(marker))}")}, hub / "pytorch_model.bin")
    code, line = cli_error(capsys, ["convert", str(hub), str(tmp_path / "hub_out")])
    assert code == 2 and "not a plain tensor checkpoint" in line and not marker.exists()


@pytest.mark.parametrize("change, message", [
    ({"parameterization": "sedd"}, "parameterization must be 'subs'"),
    ({"noise": {"type": "cosine"}}, "noise.type must be 'loglinear'"),
    ({"data": {"tokenizer_name_or_path": "bert-base-uncased"}}, "mask last"),
    ({"model": {"hidden_size": HIDDEN}}, "required field 'model.cond_dim'"),
])
def test_run_configs_that_ddlm_cannot_represent_are_refused(tmp_path, change, message):
    layout = MDLMLayout(seed=1)
    path = write_run(tmp_path / "run", layout, layout, config=run_config(**change))
    with pytest.raises(ValueError, match=message):
        read_mdlm(path)


def test_hub_config_and_source_errors(tmp_path):
    state = MDLMLayout(seed=1).state_dict()
    with pytest.raises(ValueError, match="required field 'n_heads'"):
        read_mdlm(write_hub(tmp_path / "headless", state, config={k: v for k, v in hub_config().items() if k != "n_heads"}))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        read_mdlm(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config\.yaml"):
        read_mdlm(write_run(tmp_path / "run", MDLMLayout(seed=1), MDLMLayout(seed=1)).rename(tmp_path / "alone.ckpt"))


# ---------------------------------------------------------------- the config field MDLM's time conditioning needs


def test_predict_x0_resolves_from_time_conditioning_and_is_checked(tmp_path):
    assert DDLMConfig().predict_x0 is False and DDLMConfig(time_conditioning=False).predict_x0 is True
    config = DDLMConfig.from_preset("tiny", vocab_size=7, predict_x0=True)
    assert config.time_conditioning and config.predict_x0 and config.scale_by_sigma is False
    for overrides, message in [({"time_conditioning": False, "predict_x0": False}, "predict_x0=False with time_conditioning=False"),
                               ({"predict_x0": True, "process": "uniform"}, "predict_x0=True needs process='absorbing'"),
                               ({"predict_x0": True, "objective": "ar"}, "predict_x0=True needs .* got objective='ar'"),
                               ({"predict_x0": True, "scale_by_sigma": True}, "scale_by_sigma=True and predict_x0=True"),
                               ({"predict_x0": "yes"}, "predict_x0 must be true or false")]:
        with pytest.raises(ValueError, match=message):
            DDLMConfig(**overrides)
    model = DDLMForDiffusion(config).eval()
    with pytest.raises(ValueError, match="output_hidden needs .* does not predict x0"):
        model(torch.zeros(1, 3, dtype=torch.long), 1.0, output_hidden=True)
    model.save_pretrained(tmp_path / "saved")
    assert DDLMForDiffusion.from_pretrained(tmp_path / "saved").config.predict_x0 is True
    values = DDLMConfig.from_preset("tiny", vocab_size=7).to_dict()
    values.pop("predict_x0")  # a config saved before the field existed
    assert DDLMConfig.from_dict(values).predict_x0 is False
    assert DDLMConfig.from_dict({**values, "time_conditioning": False, "scale_by_sigma": None}).predict_x0 is True
