"""LLaDA (Nie et al., "Large Language Diffusion Models") loaded natively from its published layout.

LLaDA is a LLaMA-style transformer with bidirectional attention trained as a masked diffusion model:
each token is masked with probability t (its mask token, id 126336, is inside the vocabulary) and the
network predicts the clean tokens at the masked positions. Its published directory holds a config.json
(``model_type`` "llada", ``architectures`` ["LLaDAModelLM"], OLMo-style field names: ``d_model``,
``n_heads``, ``n_kv_heads``, ``n_layers``, ``mlp_hidden_size``, ``embedding_size``, ``rope_theta``,
``rms_norm_eps``, ``weight_tying``, ``mask_token_id``, ``max_sequence_length``, ...), safetensors shards
and tokenizer files; its modeling code (``modeling_llada.py``) is never run.

The forward pass, per its ``LLaDALlamaBlock`` (``block_type`` "llama"): token embedding ``wte``; per
block x += attn_out(SDPA(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))) with n = RMSNorm(x) (``attn_norm``),
no causal mask, rotary rotate-half on q and k; x += ff_out(silu(ff_proj(m)) * up_proj(m)) with
m = RMSNorm(x) (``ff_norm``); final RMSNorm ``ln_f`` and ``ff_out`` (or ``wte`` with weight tying). That is
transformers' Llama decoder layer with non-causal attention, so the network is a ``BidirectionalLM`` of
``LlamaDecoderLayer``s and the tensors are renamed (``llada_names``). One detail differs from Llama: LLaDA
rotates q and k in float32 from float32 tables (``rope_full_precision``) and casts them back, so under
bfloat16 its layers' attention (``LLaDAAttention``) does too; in float32 and float64 that is Llama's
rotation (LLaDA's original code, with rope_full_precision, also rounds float64 q and k to float32 there).
Options the published models do not use (ALiBi, biases, QK norms, scaled logits, other block or norm
types) are refused. ``model.save_pretrained(directory)`` writes the published layout back (config.json as loaded,
the dtype updated; LLaDA's tensor names; ``ddlm.models.open_weights``), never code.
"""

from __future__ import annotations

import os

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb, eager_attention_forward)

from ..core.schedules import LogLinear
from .masked_diffusion import MaskedDiffusionModel
from .open_weights import BidirectionalLM, config_dtype, load_open_weights, model_config, padded_rows

LLADA_MASK_ID = 126336
# Fields modeling_llada.py reads that change the forward pass, with the only values implemented here
# (missing fields take configuration_llada.py's defaults, as the original does).
REQUIRED = {"block_type": ("sequential", "llama"), "layer_norm_type": ("default", "rms"), "activation_type": ("swiglu", "silu"),
            "rope": (False, True), "alibi": (False, False), "include_bias": (False, False), "include_qkv_bias": (False, False),
            "attention_layer_norm": (False, False), "input_emb_norm": (False, False), "scale_logits": (False, False),
            "block_group_size": (1, 1)}
BLOCK_NAMES = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
               "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}


def is_llada_config(config: dict) -> bool:
    """Whether a config.json declares LLaDA: ``model_type`` "llada" or ``architectures`` holding "LLaDAModelLM"."""
    return str(config.get("model_type", "")).lower() == "llada" or "LLaDAModelLM" in (config.get("architectures") or ())


def kv_heads(config: dict) -> int:
    """configuration_llada's effective_n_kv_heads: n_kv_heads, else 1 for multi-query attention, else n_heads."""
    heads, kv, multi_query = config.get("n_heads", 12), config.get("n_kv_heads"), config.get("multi_query_attention")
    if kv is None:
        return 1 if multi_query else heads
    if multi_query is not None and kv != (1 if multi_query else heads):
        raise ValueError(f"LLaDA config sets both n_kv_heads={kv} and multi_query_attention={multi_query}, which disagree")
    return kv


def llama_config(config: dict):
    """A LLaDA config.json (dict) -> the ``LlamaConfig`` of the same network (vocab_size: the output width,
    embedding_size when set), or a ValueError naming a field whose value is not implemented."""
    from transformers import LlamaConfig

    for field, (default, supported) in REQUIRED.items():
        if config.get(field, default) != supported:
            raise ValueError(f"LLaDA config field {field}={config.get(field, default)!r} is not supported (only {supported!r})")
    d_model, heads = config.get("d_model", 768), config.get("n_heads", 12)
    if d_model % heads:
        raise ValueError(f"LLaDA config: d_model {d_model} is not a multiple of n_heads {heads}")
    vocab = config.get("embedding_size") or config.get("vocab_size", 50257)
    return LlamaConfig(
        vocab_size=vocab, hidden_size=d_model, num_hidden_layers=config.get("n_layers", 12), num_attention_heads=heads,
        num_key_value_heads=kv_heads(config), intermediate_size=config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d_model,
        hidden_act="silu", rms_norm_eps=config.get("rms_norm_eps", 1e-5), rope_theta=float(config.get("rope_theta", 10_000.0)),
        max_position_embeddings=config.get("max_sequence_length", 1024), attention_bias=False, mlp_bias=False,
        tie_word_embeddings=bool(config.get("weight_tying", True)), attention_dropout=0.0, attn_implementation="sdpa",
        mask_token_id=config.get("mask_token_id", LLADA_MASK_ID), pad_token_id=None, bos_token_id=None, eos_token_id=None)


def llada_names(layers: int, tied: bool) -> dict[str, str]:
    """LLaDA's safetensors names -> ``BidirectionalLM``'s, for ``layers`` blocks (no ``ff_out`` head when tied)."""
    names = {"model.transformer.wte.weight": "model.embed_tokens.weight", "model.transformer.ln_f.weight": "model.norm.weight"}
    for index in range(layers):
        for theirs, ours in BLOCK_NAMES.items():
            names[f"model.transformer.blocks.{index}.{theirs}.weight"] = f"model.layers.{index}.{ours}.weight"
    if not tied:
        names["model.transformer.ff_out.weight"] = "lm_head.weight"
    return names


class LLaDAAttention(LlamaAttention):
    """Llama's attention as LLaDA computes it: q and k rotated in float32 at least (the cos / sin tables come in
    float32 at least: ``BidirectionalLM(wide_rotary=True)``), then cast back to v's dtype. hidden [B, L, H] -> [B, L, H]."""

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, **_) -> tuple[torch.Tensor, None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        q, k, v = (projection(hidden_states).view(shape).transpose(1, 2) for projection in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = position_embeddings
        wide = torch.promote_types(v.dtype, cos.dtype)
        q, k = apply_rotary_pos_emb(q.to(wide), k.to(wide), cos, sin)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attention(self, q.to(v.dtype), k.to(v.dtype), v, attention_mask, dropout=0.0, scaling=self.scaling)
        return self.o_proj(out.reshape(batch, length, -1).contiguous()), None


class LLaDALayer(LlamaDecoderLayer):
    """``LlamaDecoderLayer`` with ``LLaDAAttention`` (same parameters and names)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = LLaDAAttention(config, layer_idx)


def llada_network(config) -> BidirectionalLM:
    """An (uninitialised) bidirectional LLaDA network for a ``LlamaConfig`` from ``llama_config``."""
    return BidirectionalLM(config, LLaDALayer, LlamaRMSNorm, LlamaRotaryEmbedding, wide_rotary=True)


def load_llada(path: str | os.PathLike, *, num_tokenizer_tokens: int | None = None, dtype: torch.dtype | str | None = None,
               device=None, device_map=None, noise=None) -> MaskedDiffusionModel:
    """A LLaDA directory (config.json + safetensors in its published layout) -> ``MaskedDiffusionModel`` (family "llada").

    num_tokenizer_tokens: the tokenizer's length; ids from there to the output width are padded rows, never drawn
    (default: read off the directory's tokenizer files, else none banned). dtype: torch dtype or name (default
    config.json's torch_dtype, else float32). device, or device_map ("auto" with accelerate, or a dict of module
    prefixes to devices). noise: the schedule (default LogLinear: LLaDA masks with probability t). Weights that
    do not match config.json: one ValueError naming every missing, unexpected and wrong-shape tensor."""
    values = model_config(path)
    if not is_llada_config(values):
        raise ValueError(f"{path}/config.json does not declare LLaDA (model_type 'llada' or architectures ['LLaDAModelLM'])")
    config = llama_config(values)
    names = llada_names(config.num_hidden_layers, config.tie_word_embeddings)
    network = load_open_weights(path, lambda: llada_network(config), names, dtype=config_dtype(values, dtype),
                                device=device, device_map=device_map, published=values)
    return MaskedDiffusionModel(
        network, vocab_size=config.vocab_size, mask_token_id=config.mask_token_id, max_length=config.max_position_embeddings,
        banned_ids=padded_rows(path, config.vocab_size, num_tokenizer_tokens), noise=noise or LogLinear(), config=config, family="llada")
