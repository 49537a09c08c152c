"""Any transformers masked LM (BERT, RoBERTa, DistilBERT, ModernBERT, ...) as an absorbing diffusion model.

A masked LM predicts p(x0_i | x_t) at its mask token: exactly what an absorbing model's reverse
ratios need (``ddlm.models.masked_diffusion``). Loading maps the model's vocabulary onto ddlm's
states as follows:

* the tokenizer's mask token is the absorbing state (ddlm's mask state is the id one past the
  vocabulary; the network reads the tokenizer's own mask id, e.g. 103 for BERT);
* every special token of the tokenizer (CLS/BOS, SEP/EOS, PAD, UNK, the mask) and every
  embedding row past the tokenizer's vocabulary gets probability 0: never drawn;
* the tokens the tokenizer puts around a text ([CLS] ... [SEP], <s> ... </s>) are added around
  every sequence and are never noised or scored; the model's maximum length is the network's
  minus those tokens.

Nothing from the model directory is executed: configs whose ``model_type`` transformers does not
know (they need ``trust_remote_code``) are refused, and weights are read from safetensors or with
``torch.load(weights_only=True)``. A (fine-tuned) model is saved as the masked LM it is (``HubMaskedLM.save_pretrained``).
"""

from __future__ import annotations

import os
import pickle

import torch
from torch import nn

from .masked_diffusion import MaskedDiffusionModel

# Position embeddings offset by padding_idx + 1 (RoBERTa's scheme): max_position_embeddings counts those rows too.
PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text", "longformer")
UNBOUNDED_TOKENIZER_LENGTH = 10**9
# Heads of BERT-style pre-training checkpoints that a masked LM does not use (bert-base-* ship them): skipped when loading.
PRETRAINING_HEADS = ("pooler.", "seq_relationship.")  # tokenizer.model_max_length above this means "not set"


def _bert_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.cls(hidden)


def _roberta_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.lm_head(hidden)


def _distilbert_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))


def _modernbert_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.decoder(model.head(hidden))


# The output heads of the transformers masked LMs whose forward is known to be logits = head(base_model(...)[0]), per
# position (each checked against the full forward in tests/test_masked_lm.py); other classes, and subclasses of these,
# run the whole model and the rows are picked from its logits.
ROW_HEADS = {"BertForMaskedLM": _bert_head, "RobertaForMaskedLM": _roberta_head, "DistilBertForMaskedLM": _distilbert_head,
             "ModernBertForMaskedLM": _modernbert_head}


def row_head(model: nn.Module):
    """``head(model, hidden [N, H]) -> logits [N, V]`` for a transformers masked LM listed in ``ROW_HEADS`` (its exact
    class, from transformers), else None."""
    cls = type(model)
    head = ROW_HEADS.get(cls.__name__)
    if head is None or not cls.__module__.startswith("transformers.") or getattr(model, "base_model", model) is model:
        return None
    return head


class HubMaskedLM(nn.Module):
    """A transformers masked LM (``AutoModelForMaskedLM``) as a ``MaskedDiffusionModel`` network: every position
    attends to every other (no padding), sigma_bar is ignored. ids Long[B, L] -> logits [B, L, V].
    ``save_pretrained(directory, state_dict=None)`` writes the transformers model's own layout (config.json with its
    ``*ForMaskedLM`` architecture, safetensors weights), which ``load_masked_lm`` reads back.

    For the classes of ``ROW_HEADS`` it accepts rows (``accepts_rows``): ``network(ids, sigma_bar, rows=R)`` runs the base
    model on every position and the output head on the flat rows R Long[R'] of [B, L] only -> logits [R', V]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head = row_head(model)
        self.accepts_rows = self.head is not None

    def save_pretrained(self, directory, state_dict: dict | None = None) -> None:
        """The transformers model's ``save_pretrained`` (safetensors). state_dict: this module's keys (``model.`` + the
        transformers model's names) or the transformers model's own; keys of neither are a ValueError."""
        if state_dict is not None:
            own, inner = set(self.state_dict()), set(self.model.state_dict())
            if set(state_dict) <= own:
                state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()}
            elif not set(state_dict) <= inner:
                raise ValueError(f"the state dict does not match the {type(self.model).__name__}: unexpected "
                                 f"{sorted(set(state_dict) - own)[:5]}")
        self.model.save_pretrained(directory, state_dict=state_dict)  # transformers 5 writes safetensors only

    def forward(self, ids: torch.Tensor, sigma_bar: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(ids)
        if rows is None:
            return self.model(input_ids=ids, attention_mask=mask).logits
        if self.head is None:
            raise TypeError(f"{type(self.model).__name__} does not compute single rows (no known output head); call it without rows")
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask)[0]  # [B, L, H]
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.to(hidden.device))
        return self.head(self.model, hidden)


def is_masked_lm_config(config: dict) -> bool:
    """Whether a config.json declares a transformers masked-LM head (architectures ``*ForMaskedLM``)."""
    return any(str(name).endswith("ForMaskedLM") for name in config.get("architectures") or ())


def fixed_context(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after a text (BERT: [CLS], [SEP]), read off one encoded probe text."""
    probe = "a"
    plain, full = tokenizer(probe, add_special_tokens=False)["input_ids"], tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise ValueError(f"the tokenizer's special tokens do not surround the text: {probe!r} encodes to {plain} alone "
                     f"but to {full} with special tokens")


def network_length(config, tokenizer) -> int:
    """Positions the network reads: its position table (less RoBERTa's padding offset), capped by the tokenizer's
    model_max_length when that is set."""
    length = getattr(config, "max_position_embeddings", None) or UNBOUNDED_TOKENIZER_LENGTH
    if getattr(config, "model_type", "") in PADDING_OFFSET_TYPES:
        length -= (getattr(config, "pad_token_id", None) or 0) + 1
    tokenizer_length = getattr(tokenizer, "model_max_length", None) or UNBOUNDED_TOKENIZER_LENGTH
    length = min(length, tokenizer_length)
    if length >= UNBOUNDED_TOKENIZER_LENGTH:
        raise ValueError("neither the config (max_position_embeddings) nor the tokenizer (model_max_length) bounds the length")
    return length


def wrap_masked_lm(model: nn.Module, tokenizer, *, noise=None) -> MaskedDiffusionModel:
    """A loaded transformers masked LM and its tokenizer -> ``MaskedDiffusionModel`` (see the module docstring)."""
    config = model.config
    vocab_size = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else config.vocab_size
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no mask token; a masked LM's mask token is the absorbing "
                         "state, so pass the tokenizer it was trained with")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model predicts {vocab_size}; "
                         "use the tokenizer the model was trained with")
    prefix, suffix = fixed_context(tokenizer)
    banned = sorted(set(tokenizer.all_special_ids) | set(range(len(tokenizer), vocab_size)))
    return MaskedDiffusionModel(
        HubMaskedLM(model), vocab_size=vocab_size, mask_token_id=tokenizer.mask_token_id, banned_ids=banned,
        max_length=network_length(config, tokenizer) - len(prefix) - len(suffix), prefix_ids=prefix, suffix_ids=suffix,
        noise=noise, config=config, family=f"masked-lm ({config.model_type})")


def load_masked_lm(path: str | os.PathLike, tokenizer, *, dtype: torch.dtype | None = None, device_map=None) -> MaskedDiffusionModel:
    """A transformers masked-LM directory (or hub id) -> ``MaskedDiffusionModel``, its weights checked: missing or
    unexpected or wrong-shape tensors are a ValueError naming them (only the heads of BERT-style pre-training
    checkpoints that a masked LM does not use, the pooler and the next-sentence head, are skipped)."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report would repeat the error raised below
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            path, trust_remote_code=False, weights_only=True, output_loading_info=True, ignore_mismatched_sizes=True,
            **{key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None})
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: the pickled weights hold more than tensors and are not read (ddlm never unpickles code): "
                         f"{str(error).splitlines()[0]}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    unexpected = sorted(key for key in info.get("unexpected_keys") or () if not any(head in key for head in PRETRAINING_HEADS))
    problems = [f"missing tensors: {sorted(keys)}"] if (keys := info.get("missing_keys")) else []
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if mismatched := info.get("mismatched_keys"):
        problems.append("shapes differ from config.json's: " + ", ".join(
            f"{key} (checkpoint {list(saved)}, config {list(wanted)})" for key, saved, wanted in sorted(mismatched)))
    if problems:
        raise ValueError(f"the weights in {path} do not match its config ({type(model).__name__}); " + "; ".join(problems))
    return wrap_masked_lm(model.eval(), tokenizer)
