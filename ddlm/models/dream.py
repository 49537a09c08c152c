"""Dream (Ye et al., "Dream 7B: Diffusion Large Language Models") loaded natively from its published layout.

Dream is Qwen2.5 turned into a masked diffusion model: the same Qwen2 network (q/k/v projections with
biases, SwiGLU MLP, RMSNorm, rotary positions) with bidirectional attention, its mask token (id 151666)
inside the vocabulary. It keeps the autoregressive model's output alignment: the logits at position i
predict token i + 1, so ddlm reads the prediction for token i at position i - 1 (``shift_logits``).
Its published directory holds a config.json (``model_type`` "Dream", ``architectures`` ["DreamModel"],
Qwen2 field names plus ``mask_token_id``), safetensors shards under Qwen2's tensor names
(``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``, ``model.layers.N.mlp.{gate,up,down}_proj``,
``model.layers.N.{input,post_attention}_layernorm``, ``model.norm``, ``lm_head``) and tokenizer files; its
modeling code (``modeling_dream.py``) is never run. The network is a ``BidirectionalLM`` of transformers'
``Qwen2DecoderLayer``s, whose parameter names are Dream's own (no renaming). ``model.save_pretrained(directory)``
writes the published layout back (config.json as loaded, the dtype updated; ``ddlm.models.open_weights``), never code.
"""

from __future__ import annotations

import os

import torch

from ..core.schedules import LogLinear
from .masked_diffusion import MaskedDiffusionModel
from .open_weights import BidirectionalLM, config_dtype, load_open_weights, model_config, padded_rows

DREAM_MASK_ID = 151666
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Optional fields with configuration_dream.py's defaults.
DEFAULTS = {"num_key_value_heads": None, "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 10_000.0, "rope_scaling": None, "tie_word_embeddings": False, "mask_token_id": DREAM_MASK_ID}


def is_dream_config(config: dict) -> bool:
    """Whether a config.json declares Dream: ``model_type`` "Dream" (any case) or ``architectures`` holding "DreamModel"."""
    return str(config.get("model_type", "")).lower() == "dream" or "DreamModel" in (config.get("architectures") or ())


def qwen2_config(config: dict):
    """A Dream config.json (dict) -> the ``Qwen2Config`` of the same network, or a ValueError naming a missing or
    unsupported field."""
    from transformers import Qwen2Config

    missing = [field for field in REQUIRED if field not in config]
    if missing:
        raise ValueError(f"Dream config.json lacks {missing}")
    if config.get("use_sliding_window"):
        raise ValueError("Dream config field use_sliding_window=True is not supported (Dream attends over the whole sequence)")
    fields = {field: config.get(field, default) for field, default in DEFAULTS.items()}
    fields["num_key_value_heads"] = fields["num_key_value_heads"] or config["num_attention_heads"]
    if fields["rope_scaling"] is None:
        del fields["rope_scaling"]
    return Qwen2Config(**{field: config[field] for field in REQUIRED}, **fields, use_sliding_window=False, sliding_window=None,
                       attention_dropout=0.0, attn_implementation="sdpa", pad_token_id=None, bos_token_id=None, eos_token_id=None)


def dream_network(config) -> BidirectionalLM:
    """An (uninitialised) bidirectional Qwen2 network for a ``Qwen2Config`` from ``qwen2_config``."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

    return BidirectionalLM(config, Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding)


def load_dream(path: str | os.PathLike, *, num_tokenizer_tokens: int | None = None, dtype: torch.dtype | str | None = None,
               device=None, device_map=None, noise=None) -> MaskedDiffusionModel:
    """A Dream directory (config.json + safetensors in its published layout) -> ``MaskedDiffusionModel`` (family
    "dream", shifted logits). Arguments as ``ddlm.models.llada.load_llada``'s (dtype default: config.json's
    torch_dtype, bfloat16 for the published models)."""
    values = model_config(path)
    if not is_dream_config(values):
        raise ValueError(f"{path}/config.json does not declare Dream (model_type 'Dream' or architectures ['DreamModel'])")
    config = qwen2_config(values)
    network = load_open_weights(path, lambda: dream_network(config), None, dtype=config_dtype(values, dtype),
                                device=device, device_map=device_map, published=values)
    return MaskedDiffusionModel(
        network, vocab_size=config.vocab_size, mask_token_id=config.mask_token_id, max_length=config.max_position_embeddings,
        banned_ids=padded_rows(path, config.vocab_size, num_tokenizer_tokens), shift_logits=True,
        noise=noise or LogLinear(), config=config, family="dream")
