"""Dream loaded natively (ddlm.models.dream): a tiny random model written in Dream's published layout (config.json
field names, safetensors tensor names) loads without its code, computes Dream's forward pass, and ddlm reads
the prediction for token i at position i - 1."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from helpers import check_samples_and_bounds, rms_norm, write_layout

from ddlm.models.dream import is_dream_config, load_dream

VOCAB, MASK, TOKENS = 304, 150, 290  # the mask id mid-vocabulary; the tokenizer's 290 ids, rows 290..303 padding
CONFIG = {  # Dream-v0's config.json fields, at a tiny size
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 280, "eos_token_id": 280, "hidden_act": "silu", "hidden_size": 48, "initializer_range": 0.02,
    "intermediate_size": 80, "mask_token_id": MASK, "max_position_embeddings": 64, "max_window_layers": 2,
    "model_type": "Dream", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 280,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": False, "use_sliding_window": False, "vocab_size": VOCAB,
}


def dream_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under Dream's safetensors names."""
    gen = torch.Generator().manual_seed(seed)
    d, heads, kv, hidden = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]
    kv_width = d // heads * kv
    weights = {"model.embed_tokens.weight": torch.randn(config["vocab_size"], d, generator=gen),
               "model.norm.weight": 1 + 0.1 * torch.randn(d, generator=gen)}
    shapes = {"self_attn.q_proj.weight": (d, d), "self_attn.q_proj.bias": (d,), "self_attn.k_proj.weight": (kv_width, d),
              "self_attn.k_proj.bias": (kv_width,), "self_attn.v_proj.weight": (kv_width, d), "self_attn.v_proj.bias": (kv_width,),
              "self_attn.o_proj.weight": (d, d), "mlp.gate_proj.weight": (hidden, d), "mlp.up_proj.weight": (hidden, d),
              "mlp.down_proj.weight": (d, hidden), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}
    for index in range(config["num_hidden_layers"]):
        for name, shape in shapes.items():
            if len(shape) == 2:
                w = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            else:
                w = (1 if "norm" in name else 0) + 0.1 * torch.randn(shape, generator=gen)
            weights[f"model.layers.{index}.{name}"] = w
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = torch.randn(config["vocab_size"], d, generator=gen) / math.sqrt(d)
    return weights


def write_dream(path, config=CONFIG, weights=None):
    """A Dream directory: config.json + model.safetensors; returns the weights written."""
    return write_layout(path, config, dream_weights(config) if weights is None else weights)


def dream_reference(w: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Dream's forward pass re-stated from its description (Qwen2 decoder, q/k/v biases, no attention mask):
    logits [B, L, V], position i predicting token i + 1."""
    batch, length = ids.shape
    d, heads, kv, eps = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"], config["rms_norm_eps"]
    head = d // heads
    dtype = w["model.embed_tokens.weight"].dtype
    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, head, 2, dtype=torch.float32) / head)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(t):  # rotate-half rotary embedding over the head dimension
        first, second = t.chunk(2, dim=-1)
        return t * cos + torch.cat([-second, first], dim=-1) * sin

    x = w["model.embed_tokens.weight"][ids]
    for index in range(config["num_hidden_layers"]):
        p = lambda name: w[f"model.layers.{index}.{name}"]  # noqa: E731
        n = rms_norm(x, p("input_layernorm.weight"), eps)
        q = (n @ p("self_attn.q_proj.weight").T + p("self_attn.q_proj.bias")).view(batch, length, heads, head).transpose(1, 2)
        k = (n @ p("self_attn.k_proj.weight").T + p("self_attn.k_proj.bias")).view(batch, length, kv, head).transpose(1, 2)
        v = (n @ p("self_attn.v_proj.weight").T + p("self_attn.v_proj.bias")).view(batch, length, kv, head).transpose(1, 2)
        q, k = rotate(q), rotate(k)
        k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head), dim=-1) @ v
        x = x + attention.transpose(1, 2).reshape(batch, length, d) @ p("self_attn.o_proj.weight").T
        m = rms_norm(x, p("post_attention_layernorm.weight"), eps)
        x = x + (F.silu(m @ p("mlp.gate_proj.weight").T) * (m @ p("mlp.up_proj.weight").T)) @ p("mlp.down_proj.weight").T
    x = rms_norm(x, w["model.norm.weight"], eps)
    return x @ (w["model.embed_tokens.weight"] if config["tie_word_embeddings"] else w["lm_head.weight"]).T


def token_ids(batch=2, length=9, seed=1):
    ids = torch.randint(0, TOKENS, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 1::3] = MASK
    return ids


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("tied", [False, True])
def test_forward_equals_dream(tmp_path, dtype, tolerance, tied):
    config = {**CONFIG, "tie_word_embeddings": tied}
    weights = write_dream(tmp_path, config)
    model = load_dream(tmp_path, dtype=dtype)
    ids = token_ids()
    with torch.no_grad():
        logits = model.network(ids, torch.zeros(2))
    expected = dream_reference({name: t.to(dtype) for name, t in weights.items()}, config, ids)
    assert logits.dtype == dtype and logits.shape == (2, 9, VOCAB)
    assert (logits - expected).abs().max().item() <= tolerance
    assert (model.network.lm_head.weight is model.network.model.embed_tokens.weight) == tied


def test_shifted_predictions_end_to_end(tmp_path):
    """MaskedDiffusionModel reads token i's prediction at position i - 1 (token 0 at its own position)."""
    write_dream(tmp_path)
    model = load_dream(tmp_path, dtype=torch.float64, num_tokenizer_tokens=TOKENS)
    assert model.shift_logits and model.family == "dream" and model.vocab_size == VOCAB and model.mask_token_id == MASK
    ids = token_ids()
    x_t = ids.masked_fill(ids == MASK, VOCAB)  # ddlm's mask state is V; the network reads MASK there
    with torch.no_grad():
        logits = model.network(ids, None)
        scores = model(x_t, torch.full((2,), 0.7))
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    drawable = model.drawable
    expected = torch.log_softmax(shifted[..., drawable], dim=-1) - math.log(math.expm1(0.7))
    masked = x_t == VOCAB
    assert torch.allclose(scores[..., :VOCAB][..., drawable][masked].double(), expected[masked], atol=1e-5)
    assert model.banned.nonzero().flatten().tolist() == [MASK, *range(TOKENS, VOCAB)]


def test_dtype_from_config_and_tokenizer_files(tmp_path):
    write_dream(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(280)}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {str(i): {} for i in range(280, TOKENS)}}))
    model = load_dream(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # config.json's torch_dtype
    assert model.banned.nonzero().flatten().tolist() == [MASK, *range(TOKENS, VOCAB)]
    with torch.no_grad():
        assert torch.isfinite(model.network(token_ids(), None)).all()


def test_samples_and_bounds(tmp_path):
    write_dream(tmp_path)
    model = load_dream(tmp_path, dtype=torch.float32, num_tokenizer_tokens=TOKENS)
    check_samples_and_bounds(model)


def test_sharded_layout_and_device_map(tmp_path):
    weights = dream_weights(CONFIG)
    names = sorted(weights)
    shards = {"model-00001-of-00003.safetensors": names[:5], "model-00002-of-00003.safetensors": names[5:20],
              "model-00003-of-00003.safetensors": names[20:]}
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    for file, part in shards.items():
        save_file({name: weights[name] for name in part}, str(tmp_path / file))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {name: file for file, part in shards.items() for name in part}}))
    ids = token_ids()
    expected = dream_reference(weights, CONFIG, ids)
    for placement in ({"device": "cpu"}, {"device_map": {"": "cpu"}}, {"device_map": "auto"}):
        model = load_dream(tmp_path, dtype=torch.float32, **placement)
        with torch.no_grad():
            assert (model.network(ids, None) - expected).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="give device or device_map, not both"):
        load_dream(tmp_path, device="cpu", device_map="auto")


def test_mismatched_weights_are_named(tmp_path):
    weights = dream_weights(CONFIG)
    del weights["model.layers.0.self_attn.q_proj.bias"]
    weights["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(48)
    weights["lm_head.weight"] = torch.zeros(VOCAB - 4, 48)
    write_dream(tmp_path, weights=weights)
    with pytest.raises(ValueError) as error:
        load_dream(tmp_path)
    message = str(error.value)
    for part in ("missing: ['model.layers.0.self_attn.q_proj.bias']", "unexpected: ['model.layers.0.self_attn.o_proj.bias']",
                 f"lm_head.weight (checkpoint [{VOCAB - 4}, 48], config [{VOCAB}, 48])"):
        assert part in message


def test_config_recognition_and_refusals(tmp_path):
    assert is_dream_config(CONFIG) and is_dream_config({"model_type": "dream"}) and is_dream_config({"architectures": ["DreamModel"]})
    assert not is_dream_config({"model_type": "llada", "architectures": ["LLaDAModelLM"]})
    write_dream(tmp_path, {**CONFIG, "use_sliding_window": True})
    with pytest.raises(ValueError, match="use_sliding_window=True is not supported"):
        load_dream(tmp_path)
    config = dict(CONFIG)
    del config["intermediate_size"]
    write_dream(tmp_path, config, dream_weights(CONFIG))
    with pytest.raises(ValueError, match=r"lacks \['intermediate_size'\]"):
        load_dream(tmp_path)


def test_rows_read_shifted_positions_and_run_the_head_on_them_only(tmp_path):
    """``model(x_t, sigma_bar, positions=P)`` asks the network for the positions whose logits predict P's tokens (i - 1,
    token 0 its own): the log-scores equal the full output's rows (masked and unmasked, batch > 1), the head runs on
    those rows only."""
    write_dream(tmp_path)
    model = load_dream(tmp_path, dtype=torch.float32, num_tokenizer_tokens=TOKENS)
    assert model.network.accepts_rows is True
    ids = token_ids(batch=3, length=9, seed=3)
    ids[:, 0] = MASK  # token 0 masked: it reads its own position's logits
    x_t = ids.masked_fill(ids == MASK, VOCAB)
    sigma_bar = torch.tensor([0.4, 1.0, 2.0])
    seen = []
    hook = model.network.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        full, logits = model(x_t, sigma_bar), model.network(ids, None)
        flat = torch.tensor([0, 1, 2, 8, 9, 10, 17, 18, 26])
        assert (model.network(ids, None, rows=flat) - logits.reshape(-1, VOCAB)[flat]).abs().max() <= 1e-6
        seen.clear()
        for positions in (x_t == VOCAB, torch.ones_like(x_t, dtype=torch.bool), flat):
            rows = model(x_t, sigma_bar, positions=positions)
            expected = full[positions] if positions.dtype == torch.bool else full.reshape(-1, VOCAB + 1)[positions]
            torch.testing.assert_close(rows, expected, rtol=1e-6, atol=1e-5)
    hook.remove()
    assert seen == [(int((x_t == VOCAB).sum()), 48), (27, 48), (9, 48)]
