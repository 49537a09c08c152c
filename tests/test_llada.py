"""LLaDA loaded natively (ddlm.models.llada): a tiny random model written in LLaDA's published layout (config.json
field names, safetensors tensor names) loads without its code and computes LLaDA's forward pass."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from helpers import check_samples_and_bounds, rms_norm, write_layout

from ddlm.models.llada import is_llada_config, load_llada

VOCAB, EMBEDDING, MASK = 300, 320, 150  # the mask id mid-vocabulary; rows 300..319 pad the embedding
CONFIG = {  # LLaDA-8B's config.json fields, at a tiny size
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 48, "embedding_dropout": 0.0,
    "embedding_size": EMBEDDING, "eos_token_id": 299, "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
    "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": MASK, "max_sequence_length": 64, "mlp_hidden_size": 80, "mlp_ratio": 4,
    "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "pad_token_id": 299,
    "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "use_cache": False, "vocab_size": VOCAB, "weight_tying": False,
}


def llada_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under LLaDA's safetensors names."""
    gen = torch.Generator().manual_seed(seed)
    d, heads, kv, hidden = config["d_model"], config["n_heads"], config["n_kv_heads"], config["mlp_hidden_size"]
    kv_width = d // heads * kv
    weights = {"model.transformer.wte.weight": torch.randn(config["embedding_size"], d, generator=gen),
               "model.transformer.ln_f.weight": 1 + 0.1 * torch.randn(d, generator=gen)}
    shapes = {"attn_norm": (d,), "q_proj": (d, d), "k_proj": (kv_width, d), "v_proj": (kv_width, d), "attn_out": (d, d),
              "ff_norm": (d,), "ff_proj": (hidden, d), "up_proj": (hidden, d), "ff_out": (d, hidden)}
    for index in range(config["n_layers"]):
        for name, shape in shapes.items():
            w = 1 + 0.1 * torch.randn(shape, generator=gen) if len(shape) == 1 else torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            weights[f"model.transformer.blocks.{index}.{name}.weight"] = w
    if not config["weight_tying"]:
        weights["model.transformer.ff_out.weight"] = torch.randn(config["embedding_size"], d, generator=gen) / math.sqrt(d)
    return weights


def write_llada(path, config=CONFIG, weights=None):
    """A LLaDA directory: config.json + model.safetensors; returns the weights written."""
    return write_layout(path, config, llada_weights(config) if weights is None else weights)


def rotate(t, cos, sin):
    """Rotary embedding, rotate-half convention: t cos + (-t2, t1) sin over the head dimension's halves."""
    first, second = t.chunk(2, dim=-1)
    return t * cos + torch.cat([-second, first], dim=-1) * sin


def llada_reference(w: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward pass re-stated from its description (LLaDALlamaBlock, no attention mask): logits [B, L, V]."""
    batch, length = ids.shape
    d, heads, kv, eps = config["d_model"], config["n_heads"], config["n_kv_heads"], config["rms_norm_eps"]
    head = d // heads
    dtype = w["model.transformer.wte.weight"].dtype
    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, head, 2, dtype=torch.float32) / head)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    x = w["model.transformer.wte.weight"][ids]
    for index in range(config["n_layers"]):
        p = lambda name: w[f"model.transformer.blocks.{index}.{name}.weight"]  # noqa: E731
        n = rms_norm(x, p("attn_norm"), eps)
        q = (n @ p("q_proj").T).view(batch, length, heads, head).transpose(1, 2)
        k = (n @ p("k_proj").T).view(batch, length, kv, head).transpose(1, 2)
        v = (n @ p("v_proj").T).view(batch, length, kv, head).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head), dim=-1) @ v
        x = x + attention.transpose(1, 2).reshape(batch, length, d) @ p("attn_out").T
        m = rms_norm(x, p("ff_norm"), eps)
        x = x + (F.silu(m @ p("ff_proj").T) * (m @ p("up_proj").T)) @ p("ff_out").T
    x = rms_norm(x, w["model.transformer.ln_f.weight"], eps)
    out = w["model.transformer.wte.weight"] if config["weight_tying"] else w["model.transformer.ff_out.weight"]
    return x @ out.T


def token_ids(batch=2, length=7, seed=1):
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, ::3] = MASK
    return ids


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_forward_equals_llada(tmp_path, dtype, tolerance):
    weights = write_llada(tmp_path)
    model = load_llada(tmp_path, dtype=dtype)
    ids = token_ids()
    with torch.no_grad():
        logits = model.network(ids, torch.zeros(2))
    expected = llada_reference({name: t.to(dtype) for name, t in weights.items()}, CONFIG, ids)
    assert logits.dtype == dtype and logits.shape == (2, 7, EMBEDDING)
    assert (logits - expected).abs().max().item() <= tolerance


def test_tied_weights_and_attention_is_bidirectional(tmp_path):
    config = {**CONFIG, "weight_tying": True}
    weights = write_llada(tmp_path, config)
    model = load_llada(tmp_path, dtype=torch.float64)
    assert model.network.lm_head.weight is model.network.model.embed_tokens.weight
    ids = token_ids()
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % VOCAB
    with torch.no_grad():
        logits, other = model.network(ids, None), model.network(changed, None)
    assert (logits - llada_reference({n: t.double() for n, t in weights.items()}, config, ids)).abs().max() <= 1e-12
    assert (logits[:, 0] - other[:, 0]).abs().max() > 1e-6  # position 0 reads the last token


def test_wrapper_bf16_and_banned_rows(tmp_path):
    write_llada(tmp_path)
    model = load_llada(tmp_path, dtype="bfloat16", num_tokenizer_tokens=VOCAB)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.family == "llada" and model.vocab_size == EMBEDDING and model.mask_token_id == MASK
    assert model.max_length == 64 and not model.shift_logits and model.config.hidden_size == 48
    assert model.banned.nonzero().flatten().tolist() == [MASK, *range(VOCAB, EMBEDDING)]
    x_t = token_ids().masked_fill(token_ids() == MASK, EMBEDDING)  # ddlm's mask state is V
    assert torch.isfinite(model(x_t, torch.ones(2))[x_t == EMBEDDING][:, :VOCAB][:, [0, 1]]).all()


def test_bfloat16_rotates_in_float32(tmp_path):
    """LLaDA's rope_full_precision: under bfloat16 the layers get float32 rotary tables and rotate q, k in float32."""
    weights = write_llada(tmp_path)
    model = load_llada(tmp_path, dtype=torch.bfloat16)
    tables = []
    model.network.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: tables.append(kwargs["position_embeddings"]), with_kwargs=True)
    ids = token_ids()
    with torch.no_grad():
        logits = model.network(ids, None)
    assert logits.dtype == torch.bfloat16 and {t.dtype for t in tables[0]} == {torch.float32}
    rounded = {name: t.to(torch.bfloat16).float() for name, t in weights.items()}
    expected = llada_reference(rounded, CONFIG, ids)
    assert (logits.float() - expected).abs().max() <= 0.05 * expected.abs().max()


def test_tokenizer_json_bans_padded_rows(tmp_path):
    write_llada(tmp_path)
    vocab = {f"t{i}": i for i in range(280)}
    added = [{"id": i, "content": f"<|special_{i}|>"} for i in range(280, VOCAB - 10)]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": added}))
    model = load_llada(tmp_path)
    assert model.banned.nonzero().flatten().tolist() == [MASK, *range(VOCAB - 10, EMBEDDING)]


def test_samples_and_bounds(tmp_path):
    write_llada(tmp_path)
    model = load_llada(tmp_path)  # no torch_dtype in LLaDA's config.json: float32
    assert model.network.lm_head.weight.dtype == torch.float32
    check_samples_and_bounds(model)


def test_sharded_and_pickled_layouts(tmp_path):
    weights = llada_weights(CONFIG)
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(CONFIG))
    for file, part in shards.items():
        save_file({name: weights[name] for name in part}, str(sharded / file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {name: file for file, part in shards.items() for name in part}}))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(CONFIG))
    torch.save(weights, pickled / "pytorch_model.bin")
    ids = token_ids()
    expected = llada_reference(weights, CONFIG, ids)
    for path in (sharded, pickled):
        with torch.no_grad():
            assert (load_llada(path).network(ids, None) - expected).abs().max() <= 1e-5
    torch.save({**weights, "hook": argparse.Namespace(run="code")}, pickled / "pytorch_model.bin")  # not plain tensors
    with pytest.raises(ValueError, match="refused .*pytorch_model.bin"):
        load_llada(pickled)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="names shards that are not there: .*model-00002-of-00002"):
        load_llada(sharded)


def test_mismatched_weights_are_named(tmp_path):
    weights = llada_weights(CONFIG)
    del weights["model.transformer.blocks.1.up_proj.weight"]
    weights["model.transformer.blocks.0.extra.weight"] = torch.zeros(3)
    weights["model.transformer.blocks.0.k_proj.weight"] = torch.zeros(48, 48)
    write_llada(tmp_path, weights=weights)
    with pytest.raises(ValueError) as error:
        load_llada(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for part in ("missing: ['model.transformer.blocks.1.up_proj.weight']", "unexpected: ['model.transformer.blocks.0.extra.weight']",
                 "model.transformer.blocks.0.k_proj.weight (checkpoint [48, 48], config [24, 48])"):
        assert part in message


def test_config_recognition_and_refusals(tmp_path):
    assert is_llada_config(CONFIG) and is_llada_config({"architectures": ["LLaDAModelLM"]})
    assert not is_llada_config({"model_type": "Dream", "architectures": ["DreamModel"]})
    write_llada(tmp_path, {**CONFIG, "alibi": True})
    with pytest.raises(ValueError, match="alibi=True is not supported"):
        load_llada(tmp_path)
    write_llada(tmp_path, {**CONFIG, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ValueError, match="does not declare LLaDA"):
        load_llada(tmp_path)
    write_llada(tmp_path)
    with pytest.raises(ValueError, match="num_tokenizer_tokens must lie in"):
        load_llada(tmp_path, num_tokenizer_tokens=EMBEDDING + 1)
    with pytest.raises(ValueError, match="not a floating dtype"):
        load_llada(tmp_path, dtype=torch.int64)


def test_rows_run_the_head_on_asked_positions_only(tmp_path):
    """``model(x_t, sigma_bar, positions=P)`` asks the network for P's rows (``rows=``): the final norm and the output
    projection run on those rows, and the log-scores equal the full output's rows (masked and unmasked, batch > 1)."""
    write_llada(tmp_path)
    model = load_llada(tmp_path, dtype=torch.float32, num_tokenizer_tokens=VOCAB)
    assert model.network.accepts_rows is True
    ids = token_ids(batch=3, length=8, seed=2)
    x_t = ids.masked_fill(ids == MASK, EMBEDDING)
    sigma_bar = torch.tensor([0.4, 1.0, 2.0])
    heads = []
    hook = model.network.lm_head.register_forward_hook(lambda module, args, out: heads.append(tuple(args[0].shape)))
    with torch.no_grad():
        full, logits = model(x_t, sigma_bar), model.network(ids, None)
        flat = torch.tensor([0, 5, 7, 8, 15, 16, 23, 23])  # first and last positions of each sequence, masked and not
        assert (model.network(ids, None, rows=flat) - logits.reshape(-1, EMBEDDING)[flat]).abs().max() <= 1e-6
        heads.clear()
        for positions in (x_t == EMBEDDING, torch.ones_like(x_t, dtype=torch.bool), flat):
            rows = model(x_t, sigma_bar, positions=positions)
            expected = full[positions] if positions.dtype == torch.bool else full.reshape(-1, EMBEDDING + 1)[positions]
            torch.testing.assert_close(rows, expected, rtol=1e-6, atol=1e-5)
    hook.remove()
    assert heads == [(int((x_t == EMBEDDING).sum()), 48), (24, 48), (8, 48)]  # the head saw the asked rows only


@pytest.mark.parametrize("stored, loaded, sharded", [(torch.float32, torch.bfloat16, False), (torch.bfloat16, torch.bfloat16, False),
                                                     (torch.float32, torch.float32, False), (torch.float32, torch.bfloat16, True),
                                                     (torch.bfloat16, torch.bfloat16, True)])
def test_weights_are_the_files_tensors_cast(tmp_path, monkeypatch, stored, loaded, sharded):
    """Every weight equals safetensors' own tensor cast to the loaded dtype, bit for bit: a view of the file's memory
    map when no cast is needed, else read in chunks (here of 1000 bytes, a tensor's last one partial) and cast."""
    from ddlm.models import open_weights
    from ddlm.models.llada import llada_names

    monkeypatch.setattr(open_weights, "CHUNK", 1000)
    weights = {name: w.to(stored) for name, w in llada_weights(CONFIG).items()}
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    names = sorted(weights)
    parts = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]} if sharded else \
        {"model.safetensors": names}
    for file, part in parts.items():
        save_file({name: weights[name] for name in part}, str(tmp_path / file))
    if sharded:
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {name: file for file, part in parts.items() for name in part}}))
    network = load_llada(tmp_path, dtype=loaded).network
    state = network.state_dict()
    for theirs, ours in llada_names(CONFIG["n_layers"], tied=False).items():
        expected = weights[theirs].to(loaded)
        assert state[ours].dtype == loaded and state[ours].shape == expected.shape
        assert torch.equal(state[ours].view(torch.int16 if loaded == torch.bfloat16 else torch.int32),
                           expected.view(torch.int16 if loaded == torch.bfloat16 else torch.int32)), ours
