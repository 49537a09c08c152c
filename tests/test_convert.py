"""Official SEDD checkpoints convert to ``DDLMForDiffusion`` with the same log-scores.

The reference is SEDD's forward pass re-stated below from its published description (notes
sedd.md §2.4, §3, §6) over SEDD-layout weights; it shares no code with ``ddlm.model``.
"""

import copy
import json
import math
import os
import re
import shlex

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ddlm.model import DDLMForDiffusion
from ddlm.model.sedd import convert_sedd

HIDDEN, BLOCKS, HEADS, COND, TOKENS = 32, 2, 4, 16, 11
CONFIGS = {  # (graph, noise, scale_by_sigma) as SEDD's config.json / .hydra/config.yaml spell them
    "absorb-loglinear": dict(graph={"type": "absorb"}, noise={"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
                             scale_by_sigma=True),
    "uniform-geometric": dict(graph={"type": "uniform"}, noise={"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20},
                              scale_by_sigma=False),
}


def sedd_config(name):
    spec = CONFIGS[name]
    model = dict(name="tiny", type="ddit", hidden_size=HIDDEN, n_heads=HEADS, n_blocks=BLOCKS, cond_dim=COND,
                 length=64, dropout=0.1, scale_by_sigma=spec["scale_by_sigma"])
    return {"tokens": TOKENS, "graph": spec["graph"], "noise": spec["noise"], "model": model}


def num_outputs(config):
    return config["tokens"] + (config["graph"]["type"] == "absorb")


# ---------------------------------------------------------------- SEDD layout and reference forward


def bias_free_norm(dim):
    return nn.LayerNorm(dim, bias=False)


class SEDDBlockLayout(nn.Module):
    """A DDiT block's parameters, registered in SEDD's definition order (no forward pass)."""

    def __init__(self):
        super().__init__()
        self.norm1 = bias_free_norm(HIDDEN)
        self.attn_qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.attn_out = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.dropout1 = nn.Dropout()
        self.norm2 = bias_free_norm(HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU("tanh"), nn.Linear(4 * HIDDEN, HIDDEN))
        self.dropout2 = nn.Dropout()
        self.adaLN_modulation = nn.Linear(COND, 6 * HIDDEN)


class SEDDLayout(nn.Module):
    """SEDD's module tree (names, shapes, definition order; notes §3/§6) holding random weights."""

    def __init__(self, outputs, seed):
        super().__init__()
        self.vocab_embed = nn.Module()
        self.vocab_embed.embedding = nn.Parameter(torch.empty(outputs, HIDDEN))
        self.sigma_map = nn.Module()
        self.sigma_map.mlp = nn.Sequential(nn.Linear(256, COND), nn.SiLU(), nn.Linear(COND, COND))
        self.rotary_emb = nn.Module()
        head_dim = HIDDEN // HEADS
        self.rotary_emb.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.blocks = nn.ModuleList(SEDDBlockLayout() for _ in range(BLOCKS))
        self.output_layer = nn.Module()
        self.output_layer.norm_final = bias_free_norm(HIDDEN)
        self.output_layer.linear = nn.Linear(HIDDEN, outputs)
        self.output_layer.adaLN_modulation = nn.Linear(COND, 2 * HIDDEN)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # every tensor random, the usually zero-initialised ones included
            for name, p in self.named_parameters():
                p.copy_(("norm" in name) + 0.2 * torch.randn(p.shape, generator=gen))


def layer_norm(x, weight):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def linear(x, w, b=None):
    return x @ w.T + (0 if b is None else b)


def sedd_log_score(state, config, x, sigma):
    """SEDD's log-score from SEDD-layout weights: x Long[B, L], sigma [B] -> [B, L, V] (float64)."""
    w = {k: v.double() for k, v in state.items()}
    heads = config["model"]["n_heads"]
    batch, length = x.shape
    head_dim = HIDDEN // heads
    # sigma conditioning: 256 [cos | sin] features, Linear -> SiLU -> Linear, then SiLU
    freqs = torch.exp(-math.log(1e4) * torch.arange(128, dtype=torch.float64) / 128)
    args = sigma.double()[:, None] * freqs
    features = torch.cat([torch.cos(args), torch.sin(args)], -1)
    hidden = torch.nn.functional.silu(linear(features, w["sigma_map.mlp.0.weight"], w["sigma_map.mlp.0.bias"]))
    c = torch.nn.functional.silu(linear(hidden, w["sigma_map.mlp.2.weight"], w["sigma_map.mlp.2.bias"]))
    # rotate-half rotary tables [L, 1, d]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], -1)[:, None]

    def rotary(t):  # [B, L, heads, d]
        first, second = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        return t * angles.cos() + torch.cat([-second, first], -1) * angles.sin()

    h = w["vocab_embed.embedding"][x]
    for i in range(config["model"]["n_blocks"]):
        p = f"blocks.{i}."
        modulation = linear(c, w[p + "adaLN_modulation.weight"], w[p + "adaLN_modulation.bias"])
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, -1)
        a = modulate(layer_norm(h, w[p + "norm1.weight"]), shift1, scale1)
        qkv = linear(a, w[p + "attn_qkv.weight"]).reshape(batch, length, 3, heads, head_dim)
        q, k, v = rotary(qkv[:, :, 0]), rotary(qkv[:, :, 1]), qkv[:, :, 2]
        attention = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim), -1)
        attended = torch.einsum("bhqk,bkhd->bqhd", attention, v).reshape(batch, length, HIDDEN)
        h = h + gate1[:, None] * linear(attended, w[p + "attn_out.weight"])
        m = modulate(layer_norm(h, w[p + "norm2.weight"]), shift2, scale2)
        m = gelu_tanh(linear(m, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        m = linear(m, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
        h = h + gate2[:, None] * m
    shift, scale = linear(c, w["output_layer.adaLN_modulation.weight"], w["output_layer.adaLN_modulation.bias"]).chunk(2, -1)
    z = linear(modulate(layer_norm(h, w["output_layer.norm_final.weight"]), shift, scale),
               w["output_layer.linear.weight"], w["output_layer.linear.bias"])
    if config["model"]["scale_by_sigma"]:
        outputs = z.shape[-1]
        z = z - (torch.log(torch.expm1(sigma.double())) + math.log(outputs - 1))[:, None, None]
    return z.scatter(-1, x[..., None], 0.0)


# ---------------------------------------------------------------- checkpoint writers


def write_hub_dir(directory, config, state, weights):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    if weights == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def write_run(run, config, layout, ema_layout, checkpoint="checkpoints/checkpoint_3.pth", hydra=True):
    """A SEDD run dir: ``model`` weights from ``layout``, EMA shadow list (named_parameters order) from ``ema_layout``."""
    path = run / checkpoint
    path.parent.mkdir(parents=True)
    if hydra:
        (run / ".hydra").mkdir()
        full = {**config, "ngpus": 8, "training": {"batch_size": 512, "ema": 0.9999}, "optim": {"lr": 3e-4}}
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(full))
    optimizer = torch.optim.AdamW(layout.parameters(), lr=3e-4)
    shadow = [p.detach().clone() for p in ema_layout.parameters()]
    torch.save({"model": layout.state_dict(), "ema": {"decay": 0.9999, "num_updates": 3, "shadow_params": shadow},
                "optimizer": optimizer.state_dict(), "step": 3}, path)
    return path


def assert_matches_reference(model, state, config, seed=0):
    gen = torch.Generator().manual_seed(seed)
    outputs = num_outputs(config)
    x = torch.randint(0, outputs, (3, 9), generator=gen)
    x[:, ::3] = outputs - 1  # the mask token for absorb
    sigma = torch.tensor([0.01, 0.7, 5.0])
    with torch.no_grad():
        got = model(x, sigma)
    want = sedd_log_score(state, config, x, sigma)
    assert got.shape == want.shape == (3, 9, outputs)
    assert want.std() > 0.5  # a comparison of substance: modulations and head are far from zero
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- conversion tests


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hub_directory_converts_to_the_same_log_scores(tmp_path, name, weights):
    config = sedd_config(name)
    state = SEDDLayout(num_outputs(config), seed=1).state_dict()
    source = write_hub_dir(tmp_path / "sedd", config, state, weights)
    converted = convert_sedd(source, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    model = DDLMForDiffusion.from_pretrained(tmp_path / "out")
    assert model.config.process == {"absorb": "absorbing", "uniform": "uniform"}[config["graph"]["type"]]
    assert model.config.schedule == config["noise"]["type"]
    assert model.config.max_position_embeddings == 64 and not model.config.tie_word_embeddings
    assert_matches_reference(model, state, config)
    assert_matches_reference(converted, state, config, seed=1)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("checkpoint", ["checkpoints/checkpoint_3.pth", "checkpoints-meta/checkpoint.pth"])
def test_training_checkpoint_converts_its_ema_or_raw_weights(tmp_path, name, checkpoint):
    config = sedd_config(name)
    raw, ema = SEDDLayout(num_outputs(config), seed=1), SEDDLayout(num_outputs(config), seed=2)
    path = write_run(tmp_path / "run", config, raw, ema, checkpoint)
    convert_sedd(path, tmp_path / "ema")
    assert_matches_reference(DDLMForDiffusion.from_pretrained(tmp_path / "ema"), ema.state_dict(), config)
    convert_sedd(path, tmp_path / "raw", ema=False)
    assert_matches_reference(DDLMForDiffusion.from_pretrained(tmp_path / "raw"), raw.state_dict(), config)


def test_config_argument_overrides_where_the_config_is_read(tmp_path):
    config = sedd_config("uniform-geometric")
    layout = SEDDLayout(num_outputs(config), seed=1)
    path = write_run(tmp_path / "run", config, layout, layout, "weights/last.pth", hydra=False)
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config\.yaml"):
        convert_sedd(path, tmp_path / "out")
    yaml_text = yaml.safe_dump(config).replace("0.0001", "1e-4")  # YAML 1.1 reads a dotless 1e-4 as a string
    (tmp_path / "run.yaml").write_text(yaml_text)
    model = convert_sedd(path, tmp_path / "out", config=tmp_path / "run.yaml")
    assert model.config.sigma_min == 1e-4 and model.config.sigma_max == 20.0
    assert_matches_reference(model, layout.state_dict(), config)
    config["model"]["n_heads"] = 2  # a hub dir's config.json is overridden the same way
    (tmp_path / "other.json").write_text(json.dumps(config))
    source = write_hub_dir(tmp_path / "hub", sedd_config("uniform-geometric"), layout.state_dict(), "safetensors")
    with pytest.raises(ValueError, match="non-standard rotary"):  # head dim 16 now
        convert_sedd(source, tmp_path / "out2", config=tmp_path / "other.json")


def test_ddp_module_prefix_is_stripped(tmp_path):
    config = sedd_config("absorb-loglinear")
    state = SEDDLayout(num_outputs(config), seed=1).state_dict()
    source = write_hub_dir(tmp_path / "sedd", config, {f"module.{k}": v for k, v in state.items()}, "bin")
    assert_matches_reference(convert_sedd(source, tmp_path / "out"), state, config)


def test_hub_repo_id_is_downloaded_then_read_as_a_directory(tmp_path, monkeypatch):
    import huggingface_hub

    config = sedd_config("absorb-loglinear")
    state = SEDDLayout(num_outputs(config), seed=1).state_dict()
    source = write_hub_dir(tmp_path / "snapshot", config, state, "safetensors")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: calls.append(repo_id) or str(source))
    assert_matches_reference(convert_sedd("louaaron/sedd-tiny", tmp_path / "out"), state, config)
    assert calls == ["louaaron/sedd-tiny"]


# ---------------------------------------------------------------- refusals


@pytest.fixture
def hub_dir(tmp_path):
    """A valid absorbing hub dir's (config, state) and a writer for variants of it."""
    config = sedd_config("absorb-loglinear")
    state = SEDDLayout(num_outputs(config), seed=1).state_dict()
    return config, state, lambda c, s: write_hub_dir(tmp_path / "variant", c, s, "safetensors")


def test_missing_sources_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        convert_sedd(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_sedd(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(sedd_config("absorb-loglinear")))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert_sedd(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, message", [
    ("model.n_heads", None, "required field 'model.n_heads'"),
    ("tokens", None, "required field 'tokens'"),
    ("noise.sigma_max", None, None),  # not needed for loglinear
    ("graph.type", "roulette", "graph.type must be one of"),
    ("noise.type", "cosine", "noise.type must be one of"),
    ("model.scale_by_sigma", "yes", "must be bool"),
])
def test_config_fields_are_checked(tmp_path, hub_dir, field, value, message):
    config, state, write = hub_dir
    config = copy.deepcopy(config)
    *parents, last = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value
    source = write(config, state)
    if message is None:
        convert_sedd(source, tmp_path / "out")
    else:
        with pytest.raises(ValueError, match=message):
            convert_sedd(source, tmp_path / "out")


def test_geometric_noise_needs_its_sigmas(tmp_path, hub_dir):
    config, state, write = hub_dir
    config = {**config, "graph": {"type": "uniform"}, "noise": {"type": "geometric", "sigma_min": 1e-4},
              "model": {**config["model"], "scale_by_sigma": False}}
    state = SEDDLayout(TOKENS, seed=1).state_dict()
    with pytest.raises(ValueError, match="required field 'noise.sigma_max'"):
        convert_sedd(write(config, state), tmp_path / "out")


def test_embedding_rows_must_match_the_graph(tmp_path, hub_dir):
    config, _, write = hub_dir
    state = SEDDLayout(TOKENS, seed=1).state_dict()  # a uniform-sized (N-row) checkpoint
    with pytest.raises(ValueError, match=r"vocab_embed\.embedding .* 12 .*absorb"):
        convert_sedd(write(config, state), tmp_path / "out")


def test_non_standard_rotary_is_refused(tmp_path, hub_dir):
    config, state, write = hub_dir
    state = {**state, "rotary_emb.inv_freq": state["rotary_emb.inv_freq"] ** 0.5}
    with pytest.raises(ValueError, match="non-standard rotary"):
        convert_sedd(write(config, state), tmp_path / "out")


def test_unmapped_missing_and_misshapen_keys_are_named(tmp_path, hub_dir):
    config, state, write = hub_dir
    state = dict(state)
    del state["blocks.1.attn_out.weight"]
    state["blocks.0.attn_bias"] = torch.zeros(HIDDEN)
    state["blocks.1.mlp.2.bias"] = torch.zeros(HIDDEN + 1)
    with pytest.raises(ValueError) as error:
        convert_sedd(write(config, state), tmp_path / "out")
    for name in ("blocks.0.attn_bias", "layers.1.attn.out.weight", "layers.1.mlp.fc2.bias"):
        assert name in str(error.value)


def test_ema_list_must_match_the_parameters(tmp_path):
    config = sedd_config("absorb-loglinear")
    layout = SEDDLayout(num_outputs(config), seed=1)
    path = write_run(tmp_path / "run", config, layout, layout)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["ema"]["shadow_params"].pop()
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="shadow_params has 29 tensors, expected 30"):
        convert_sedd(path, tmp_path / "out")
    convert_sedd(path, tmp_path / "out", ema=False)  # the raw weights are still usable
    checkpoint["ema"]["shadow_params"] = checkpoint["ema"]["shadow_params"][::-1] + [torch.zeros(1)]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="EMA weight for vocab_embed.embedding"):
        convert_sedd(path, tmp_path / "out2")
    del checkpoint["ema"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="no EMA weights"):
        convert_sedd(path, tmp_path / "out2")


class CodePayload:
    """Pickles as a call to os.system: what weights_only=False would run on load."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("kind", ["pth", "bin"])
def test_pickled_code_is_refused_and_never_run(tmp_path, kind):
    config = sedd_config("absorb-loglinear")
    layout = SEDDLayout(num_outputs(config), seed=1)
    marker = tmp_path / "pwned"
    payload = CodePayload(f"touch {shlex.quote(str(marker))}")
    if kind == "pth":  # a valid training checkpoint whose 'step' unpickles as a call
        source = path = write_run(tmp_path / "run", config, layout, layout)
        torch.save({**torch.load(path, weights_only=True), "step": payload}, path)
    else:
        state = layout.state_dict()
        source = write_hub_dir(tmp_path / "sedd", config, state, "bin")
        path = source / "pytorch_model.bin"
        torch.save({**state, "extra": payload}, path)
    with pytest.raises(ValueError, match="refused .* not a plain tensor checkpoint"):
        convert_sedd(source, tmp_path / "out")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_convert_command_writes_a_directory_the_pipeline_loads(tmp_path, capsys):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from ddlm.cli import main
    from ddlm.pipeline import DiffusionPipeline

    config = sedd_config("absorb-loglinear")
    state = SEDDLayout(num_outputs(config), seed=2).state_dict()
    source = write_hub_dir(tmp_path / "sedd", config, state, "safetensors")
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(TOKENS)}, unk_token="w0"))
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(tmp_path / "tokenizer")
    main(["convert", "sedd", str(source), str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tokenizer")])
    assert "absorbing process over 11 tokens, loglinear schedule, 2 x 32" in capsys.readouterr().out
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert len(pipe.tokenizer) == TOKENS
    assert_matches_reference(pipe.model, state, config)
    with pytest.raises(SystemExit):
        main(["convert", "sedd", str(tmp_path / "missing"), str(tmp_path / "out2")])
    assert "no such file or directory" in capsys.readouterr().err
    listed = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(listed)
    assert set(listed) == {p.name for p in (tmp_path / "out").iterdir()} - {"manifest.json"}
    weights = tmp_path / "out" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of the last weight: still a readable file, a different model
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(tmp_path / "out"), "--length", "4", "--steps", "1", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and f"{weights} does not match the manifest" in lines[0]


def test_a_converted_directory_carries_a_manifest_without_a_tokenizer_too(tmp_path):
    config = sedd_config("absorb-loglinear")
    source = write_hub_dir(tmp_path / "sedd", config, SEDDLayout(num_outputs(config), seed=2).state_dict(), "safetensors")
    convert_sedd(source, tmp_path / "out")
    assert set(json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]) == {"config.json", "model.safetensors"}
    (tmp_path / "out" / "config.json").write_text((tmp_path / "out" / "config.json").read_text().replace("\n", "\n "))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'out' / 'config.json'} does not match the manifest")):
        DDLMForDiffusion.from_pretrained(tmp_path / "out")
