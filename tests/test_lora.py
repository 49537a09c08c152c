"""LoRA adapters through peft (ddlm.training.lora): exact identity at initialisation, only the adapters train, merging
restores a plain model with the same outputs, adapters round-trip through peft's file format; on DDLMForDiffusion, a
tiny BERT masked LM and a tiny LLaDA (Llama layers) network."""

import json

import pytest
import torch

from helpers import randomised

pytest.importorskip("peft")

import ddlm  # noqa: E402
from ddlm.models.masked_diffusion import MaskedDiffusionModel  # noqa: E402
from ddlm.training.lora import (DEFAULT_TARGETS, adapter_state_dict, add_lora, default_targets, load_adapter,  # noqa: E402
                                merge_lora, save_adapter, trainable_parameters)

LENGTH = 12


def ddlm_model(seed=0):
    return randomised(ddlm.DDLMConfig.from_preset("tiny", vocab_size=50, max_position_embeddings=16), seed=seed)


def bert_model(seed=0):
    """A tiny random BertForMaskedLM over 25 word pieces, wrapped as an absorbing diffusion model."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    from ddlm.models.masked_lm import wrap_masked_lm

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, mask_token="[MASK]")
    torch.manual_seed(seed)
    network = BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=LENGTH + 2)).eval()
    return wrap_masked_lm(network, tokenizer).eval()


def llada_model(seed=0):
    """A tiny random LLaDA network (Llama layers, bidirectional) as a MaskedDiffusionModel."""
    from ddlm.models.llada import llada_network, llama_config

    config = llama_config({"model_type": "llada", "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
                           "rope": True, "d_model": 16, "n_heads": 4, "n_kv_heads": 2, "n_layers": 1,
                           "mlp_hidden_size": 24, "vocab_size": 30, "max_sequence_length": LENGTH, "mask_token_id": 29,
                           "weight_tying": False})
    torch.manual_seed(seed)
    network = llada_network(config)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.3)
    return MaskedDiffusionModel(network, vocab_size=30, mask_token_id=29, max_length=LENGTH, config=config, family="llada").eval()


BUILDERS = {"ddlm": ddlm_model, "bert": bert_model, "llama": llada_model}


def inputs(model, seed=1):
    """x_t Long[2, LENGTH] with about half the positions masked, sigma_bar [2]."""
    gen = torch.Generator().manual_seed(seed)
    states = model.graph.num_states if hasattr(model.graph, "num_states") else model.vocab_size + 1
    mask = states - 1
    x_t = torch.randint(5, mask, (2, LENGTH), generator=gen)
    x_t[torch.rand(2, LENGTH, generator=gen) < 0.5] = mask
    return x_t, torch.tensor([0.4, 1.7])


def finite(scores):
    return torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))


def perturb(model, std=0.2, seed=3):
    """Nonzero LoRA weights (B starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_defaults_identity_at_init_and_only_adapters_trainable(kind):
    model = BUILDERS[kind]()
    assert default_targets(model) == list(DEFAULT_TARGETS[kind])
    x_t, sigma_bar = inputs(model)
    rows = x_t == x_t.max()
    with torch.no_grad():
        before, before_rows = model(x_t, sigma_bar), model(x_t, sigma_bar, positions=rows)
    graph, noise, config, cls = model.graph, model.noise, model.config, type(model)
    assert add_lora(model, rank=4, alpha=8.0) is model
    assert type(model) is cls and model.graph is graph and model.noise is noise and model.config is config
    with torch.no_grad():
        assert torch.equal(model(x_t, sigma_bar), before)
        assert torch.equal(model(x_t, sigma_bar, positions=rows), before_rows)
    lora = {name for name, _ in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert lora and trainable == lora
    assert {id(p) for p in trainable_parameters(model)} == {id(p) for n, p in model.named_parameters() if n in lora}
    wrapped = {name.rpartition(".lora_")[0].rpartition(".")[2] for name in lora}
    assert wrapped == set(DEFAULT_TARGETS[kind])
    assert set(adapter_state_dict(model)) == lora


def test_ddlm_defaults_leave_modulations_head_and_time_embedding_alone():
    model = add_lora(ddlm_model(), rank=2, alpha=2.0)
    wrapped = {name.partition(".lora_")[0] for name in adapter_state_dict(model)}
    assert wrapped == {f"layers.{i}.{path}" for i in range(model.config.num_hidden_layers)
                       for path in ("attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2")}


def test_optimizer_steps_change_only_lora_parameters():
    model = add_lora(ddlm_model(), rank=4, alpha=8.0).train()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    x_t, sigma_bar = inputs(model)
    for _ in range(3):
        loss = finite(model(x_t, sigma_bar)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
    assert changed and all(".lora_" in name for name in changed)
    assert any(".lora_B." in name for name in changed)  # B leaves zero: the adapters now act


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_merge_equals_unmerged_and_restores_the_plain_model(kind):
    model = BUILDERS[kind]()
    keys = list(model.state_dict())
    x_t, sigma_bar = inputs(model)
    with torch.no_grad():
        original = model(x_t, sigma_bar)
    add_lora(model, rank=3, alpha=6.0, dropout=0.1)
    assert not any(module.training for module in model.modules())  # the adapters' dropout follows the eval model
    perturb(model)
    with torch.no_grad():
        adapted = model(x_t, sigma_bar)
        assert (finite(adapted) - finite(original)).abs().max() > 1e-3
        assert merge_lora(model) is model
        merged = model(x_t, sigma_bar)
    torch.testing.assert_close(finite(merged), finite(adapted), atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isfinite(merged), torch.isfinite(adapted))
    assert list(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())  # trainable again, as before add_lora
    assert not any("lora" in name for name, _ in model.named_modules())


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_adapters_on_a_bfloat16_base_are_float32_and_merge_in_float32(kind):
    model = BUILDERS[kind]().to(torch.bfloat16)
    x_t, sigma_bar = inputs(model)
    add_lora(model, rank=3, alpha=6.0)
    adapters = [p for name, p in model.named_parameters() if ".lora_" in name]
    assert adapters and {p.dtype for p in adapters} == {torch.float32}
    assert {p.dtype for name, p in model.named_parameters() if ".lora_" not in name} == {torch.bfloat16}
    perturb(model, std=0.02)
    with torch.no_grad():
        adapted = model(x_t, sigma_bar)
        reference = {name: p.double() for name, p in model.state_dict().items()}
        merge_lora(model, dtype=torch.float32)
    assert torch.isfinite(adapted).any() and {p.dtype for p in model.parameters()} == {torch.float32}
    merged = 0
    for name, weight in model.state_dict().items():
        a = reference.get(name.removesuffix(".weight") + ".lora_A.default.weight")
        if a is not None:  # W + (alpha / r) B A in float64 from the bfloat16 base and the float32 adapters
            b = reference[name.removesuffix(".weight") + ".lora_B.default.weight"]
            exact = reference[name.removesuffix(".weight") + ".base_layer.weight"] + 2.0 * b @ a
            assert (weight.double() - exact).abs().max() <= 2e-7 * exact.abs().max(), name
            merged += 1
    assert merged == len(adapters) // 2


def test_merged_model_saves_and_reloads_as_a_plain_ddlm_model(tmp_path):
    model = add_lora(ddlm_model(), rank=4, alpha=4.0)
    perturb(model)
    merge_lora(model)
    model.save_pretrained(tmp_path)
    reloaded = ddlm.DDLMForDiffusion.from_pretrained(tmp_path).eval()
    x_t, sigma_bar = inputs(model)
    with torch.no_grad():
        assert torch.equal(reloaded(x_t, sigma_bar), model(x_t, sigma_bar))


@pytest.mark.parametrize("kind", ["ddlm", "llama"])
def test_adapter_save_and_load_round_trip(tmp_path, kind):
    model = add_lora(BUILDERS[kind](), rank=4, alpha=16.0, dropout=0.05, target_modules=["qkv", "fc2"] if kind == "ddlm" else None)
    perturb(model)
    targets = ["qkv", "fc2"] if kind == "ddlm" else None
    save_adapter(model.eval(), tmp_path, rank=4, alpha=16.0, dropout=0.05, target_modules=targets)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16.0 and config["lora_dropout"] == 0.05
    assert sorted(config["target_modules"]) == sorted(targets or DEFAULT_TARGETS[kind])
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all(name.startswith("base_model.model.") and ".default." not in name for name in saved)
    fresh = load_adapter(BUILDERS[kind](), tmp_path).eval()
    x_t, sigma_bar = inputs(model)
    with torch.no_grad():
        assert torch.equal(fresh(x_t, sigma_bar), model(x_t, sigma_bar))
    assert adapter_state_dict(fresh).keys() == adapter_state_dict(model).keys()
    assert all(torch.equal(adapter_state_dict(fresh)[k], v) for k, v in adapter_state_dict(model).items())


def test_adapter_loading_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    model = add_lora(ddlm_model(), rank=2, alpha=2.0)
    save_adapter(model, tmp_path, rank=2, alpha=2.0, dropout=0.0, target_modules=None)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    dropped = sorted(weights)[0]
    save_file({**{k: v for k, v in weights.items() if k != dropped}, "base_model.model.stray.lora_A.weight": torch.zeros(1)},
              tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"missing: \['" + dropped.replace(".", r"\.") + r"'\]; unexpected: \['base_model\.model\.stray"):
        load_adapter(ddlm_model(), tmp_path)
    with pytest.raises(ValueError, match="finetune.lora_rank is 3"):
        save_adapter(model, tmp_path, rank=3, alpha=2.0, dropout=0.0, target_modules=None)


def test_refusals_name_the_recipe_field():
    with pytest.raises(ValueError) as error:
        add_lora(ddlm_model(), rank=4, alpha=8.0, target_modules=["qkv", "q_proj"])
    assert str(error.value).startswith("finetune.lora_target_modules: 'q_proj' matches no module of the model; "
                                       "its linear modules are named: [")
    assert "'fc1'" in str(error.value) and "'lm_head'" in str(error.value)
    for settings, field in [(dict(rank=0, alpha=1.0), "lora_rank"), (dict(rank=2, alpha=0.0), "lora_alpha"),
                            (dict(rank=2, alpha=1.0, dropout=1.0), "lora_dropout")]:
        with pytest.raises(ValueError, match=f"finetune.{field}"):
            add_lora(ddlm_model(), **settings)
    model = add_lora(ddlm_model(), rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="finetune.lora_target_modules"):
        default_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_gpt2_style_conv1d_defaults():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    network = GPT2Model(GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    assert default_targets(network) == ["c_attn", "c_proj", "c_fc"]
    ids = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        before = network(ids).last_hidden_state
        add_lora(network, rank=2, alpha=4.0)
        assert torch.equal(network(ids).last_hidden_state, before)
        perturb(network)
        adapted = network(ids).last_hidden_state
        merge_lora(network)
        torch.testing.assert_close(network(ids).last_hidden_state, adapted, atol=1e-5, rtol=1e-5)


def test_missing_peft_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"LoRA needs the peft package: pip install 'ddlm\[peft\]'"):
        add_lora(ddlm_model(), rank=2, alpha=1.0)
