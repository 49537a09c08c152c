"""A transformers causal LM (GPT-2, Llama, Qwen2) turned into an absorbing diffusion model (Dream / DiffuLLaMA adaptation).

The causal LM keeps its weights. One token is added, the mask: a new embedding row at the end of the matrix (id
``rows``, the number of rows the causal LM had), its input embedding the mean of the existing rows (its output row
is irrelevant: the mask is banned). The transformer then runs with bidirectional attention, or any given attention
pattern (``attention_mask`` Bool[L, L], e.g. causal-to-bidirectional annealing during training), and the
autoregressive head is reused unchanged: the logits at position i predict token i + 1 (``shift_logits``), so with
a causal mask the adapted model's prediction at the first masked position is exactly the causal LM's next-token
distribution.

State space: the network's vocabulary is ``rows + 1`` wide; ddlm's real states are its ids, its mask state is one past
them (``MaskedDiffusionModel``), handed to the network as the mask row's id. Banned (never drawn): the mask row and
every row past the causal LM's tokenizer (padded rows; the tokenizer's own mask token lands there when the tokenizer
is shorter than the embedding matrix).

Attention masks (transformers 5.25, read from its source and checked in tests/test_adapted_causal.py for GPT-2, Llama and
Qwen2 under the sdpa and eager implementations). A 4D mask given to the model is passed to the attention implementation
as it is (``masking_utils._preprocess_mask_arguments``); sdpa applies a boolean one (True: attend) but eager *adds* the
mask to the attention logits, so eager needs an additive mask (0, or the dtype's minimum) and a boolean one would be
silently wrong. The network builds the right 4D mask [B, 1, L, L] for the implementation. Without a given pattern it
runs the model with ``is_causal=False`` and no mask: the models' forward (``utils.generic.merge_with_config_defaults``)
then builds a bidirectional mask (None without padding, for sdpa) and hands ``is_causal=False`` to the attention, so
sdpa is not left to its layers' hard-wired ``is_causal = True`` and may use its fused kernels (no L x L mask). Other
implementations (flash attention, flex) ignore a 4D tensor mask and are refused.

Saving: ``MaskedDiffusionModel.save_pretrained`` writes the causal LM's own ``save_pretrained`` layout (safetensors) with
a ``"ddlm_diffusion"`` entry in config.json (mask id, shift, source model type, tokenizer size); ``save_adapted`` adds the
tokenizer. Such a directory is family ``"adapted-causal"`` (``ddlm.models.families``) and loads with
``ddlm.text.loading.load_model``. Nothing from a model directory runs (no trust_remote_code), weights are safetensors.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..core.checks import looks_like_path
from ..core.schedules import LogLinear
from .masked_diffusion import MaskedDiffusionModel

SUPPORTED_CAUSAL = ("gpt2", "llama", "qwen2")  # config model_type
CAUSAL_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
MASK_TOKEN = "<|mdm_mask|>"
CONFIG_KEY = "ddlm_diffusion"
FAMILY = "adapted-causal"
MASKABLE_ATTENTION = ("sdpa", "eager")  # attention implementations that apply a 4D mask as given
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]  # config, weights, tokenizer: never code


def check_causal_config(config: dict, where: str = "the model") -> str:
    """The model_type of a causal LM config.json that can be adapted, or the ValueError naming what can."""
    model_type = str(config.get("model_type", ""))
    architectures = [str(name) for name in config.get("architectures") or ()]
    if model_type not in SUPPORTED_CAUSAL or any(name != CAUSAL_CLASSES[model_type] for name in architectures):
        raise ValueError(f"cannot adapt {model_type or '?'}/{','.join(architectures) or '?'} : supported causal LMs are "
                         f"{', '.join(SUPPORTED_CAUSAL)}")
    return model_type


def _local(path) -> str:
    """A local directory as is; a hub id -> its config, safetensors and tokenizer files in the local cache."""
    name = os.fspath(path)
    if looks_like_path(name) or os.path.isdir(os.path.expanduser(name)):
        name = os.path.expanduser(name)
        if not os.path.isdir(name):
            raise FileNotFoundError(f"no model directory at {name}")
        return name
    from huggingface_hub import snapshot_download

    return snapshot_download(name, allow_patterns=DOWNLOAD_PATTERNS)


def _read_config(path: str) -> dict:
    import json

    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise ValueError(f"{path} holds no config.json")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _load_causal(path: str, dtype, device_map=None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    options = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False, **options).eval()


class AdaptedCausalLM(nn.Module):
    """A transformers causal LM run with a given attention pattern, as a ``MaskedDiffusionModel`` network.

    ``network(ids Long[B, L], sigma_bar [B], attention_mask=None, rows=None)`` -> logits [B, L, V] (sigma_bar ignored).
    attention_mask: Bool[L, L] (True: query i may attend key j) or Bool[B, L, L]; None: every position attends to every
    other (bidirectional). rows: flat indices Long[R] into [B, L]: only those positions' logits, [R, V] (the output head
    runs on R rows). ``save_pretrained(directory, state_dict=None)`` writes the causal LM's layout with the
    ``ddlm_diffusion`` config entry (``state_dict``: this module's keys, or the causal LM's own)."""

    accepts_attention_mask = True
    accepts_rows = True

    def __init__(self, model: nn.Module):
        super().__init__()
        implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        if implementation not in MASKABLE_ATTENTION:
            raise ValueError(f"the {implementation!r} attention implementation does not apply ddlm's attention masks; load the "
                             f"causal LM with attn_implementation= one of {MASKABLE_ATTENTION}")
        self.model = model

    def attention_bias(self, attention_mask: torch.Tensor, batch: int, length: int, device, dtype) -> torch.Tensor:
        """The 4D mask [B, 1, L, L] the attention implementation applies: Bool (sdpa) or additive (eager)."""
        if attention_mask.dtype != torch.bool or attention_mask.dim() not in (2, 3) or \
                tuple(attention_mask.shape[-2:]) != (length, length) or \
                (attention_mask.dim() == 3 and attention_mask.shape[0] not in (1, batch)):
            raise ValueError(f"attention_mask must be Bool[{length}, {length}] or Bool[{batch}, {length}, {length}], got "
                             f"{attention_mask.dtype} {list(attention_mask.shape)}")
        allowed = attention_mask.to(device).reshape(-1, 1, length, length)
        allowed = allowed.expand(batch, 1, length, length)
        if self.model.config._attn_implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)

    def forward(self, ids: torch.Tensor, sigma_bar: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        batch, length = ids.shape
        head = self.model.get_output_embeddings()
        mask = None
        if attention_mask is not None:
            mask = self.attention_bias(attention_mask, batch, length, ids.device, head.weight.dtype)
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask, is_causal=False, use_cache=False).last_hidden_state
        if rows is not None:
            hidden = hidden.reshape(batch * length, -1).index_select(0, rows.to(hidden.device))
        return head(hidden)

    def save_pretrained(self, directory, state_dict: dict | None = None) -> None:
        """The causal LM's ``save_pretrained`` (safetensors; config.json carries the ``ddlm_diffusion`` entry)."""
        if getattr(self.model.config, CONFIG_KEY, None) is None:
            raise ValueError(f"the causal LM has no {CONFIG_KEY!r} config entry: adapt it with adapt_causal_lm first")
        if state_dict is not None and set(state_dict) <= set(self.state_dict()):  # this module's keys: "model." + the LM's
            state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()}
        self.model.save_pretrained(directory, state_dict=state_dict)  # transformers 5 writes safetensors only


def wrap_adapted(model: nn.Module, *, num_tokenizer_tokens: int, shift_logits: bool = True, noise=None) -> MaskedDiffusionModel:
    """An adapted causal LM (its embeddings already hold the mask row, config.json's ``ddlm_diffusion`` entry set) ->
    ``MaskedDiffusionModel``: banned the mask row and every row from ``num_tokenizer_tokens`` on."""
    entry = getattr(model.config, CONFIG_KEY, None) or {}
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if model.get_input_embeddings().weight.shape[0] != vocab_size:
        raise ValueError(f"the input embeddings have {model.get_input_embeddings().weight.shape[0]} rows but the output "
                         f"head {vocab_size}")
    mask = int(entry.get("mask_token_id", vocab_size - 1))
    if not 0 < num_tokenizer_tokens <= vocab_size:
        raise ValueError(f"the tokenizer has {num_tokenizer_tokens} tokens but the adapted model's vocabulary {vocab_size}")
    config = model.config
    return MaskedDiffusionModel(
        AdaptedCausalLM(model), vocab_size=vocab_size, mask_token_id=mask, max_length=int(config.max_position_embeddings),
        banned_ids=range(min(num_tokenizer_tokens, mask), vocab_size), shift_logits=shift_logits, noise=noise or LogLinear(),
        config=config, family=f"{FAMILY} ({config.model_type})")


def adapt_causal_lm(path: str | os.PathLike, *, shift_logits: bool = True, dtype=None, device=None, tokenizer=None):
    """A causal LM directory or hub id (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM) -> (``MaskedDiffusionModel``
    family "adapted-causal (<model_type>)", tokenizer with the mask token ``<|mdm_mask|>``); see the module docstring.

    shift_logits: read token i's prediction at position i - 1 (the AR head unchanged; default). dtype / device: of the
    weights (default: as saved, the CPU). tokenizer: instead of the directory's own (it gains the mask token)."""
    import copy

    local = _local(path)
    config = _read_config(local)
    if CONFIG_KEY in config:
        raise ValueError(f"{path} is already an adapted diffusion model; load it with ddlm.text.loading.load_model")
    check_causal_config(config, os.fspath(path))
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    else:
        tokenizer = copy.deepcopy(tokenizer)
    model = _load_causal(local, dtype)
    rows = model.get_input_embeddings().weight.shape[0]
    before = len(tokenizer)
    if before > rows:
        raise ValueError(f"the tokenizer has {before} tokens but the causal LM's embedding matrix {rows} rows")
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if len(tokenizer) != before + 1:
        raise ValueError(f"the tokenizer already holds {MASK_TOKEN!r}: is it an adapted model's tokenizer?")
    add_mask_row(model)
    model.config.__setattr__(CONFIG_KEY, {"mask_token_id": rows, "shift_logits": bool(shift_logits),
                                          "adapted_from": model.config.model_type, "tokenizer_tokens": before})
    adapted = wrap_adapted(model, num_tokenizer_tokens=before, shift_logits=shift_logits)
    return adapted.to(device or "cpu").eval(), tokenizer


@torch.no_grad()
def add_mask_row(model: nn.Module) -> int:
    """Grow the causal LM's embeddings (input and output) by one row, the mask, at the end; its input embedding the mean of
    the existing rows (an untied output row likewise). Returns the mask's id (the old row count)."""
    rows = model.get_input_embeddings().weight.shape[0]
    mean = model.get_input_embeddings().weight.float().mean(0)
    head = model.get_output_embeddings()
    head_mean = None if head is None else head.weight.float().mean(0)
    model.resize_token_embeddings(rows + 1, mean_resizing=False)
    model.get_input_embeddings().weight[rows] = mean.to(model.get_input_embeddings().weight.dtype)
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        head.weight[rows] = head_mean.to(head.weight.dtype)
        if getattr(head, "bias", None) is not None:
            head.bias[rows] = 0
    return rows


def save_adapted(model: MaskedDiffusionModel, tokenizer, directory: str | os.PathLike) -> None:
    """An adapted model and its tokenizer (with the mask token) into one directory that ``load_model`` reads back."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def is_adapted_config(config: dict) -> bool:
    """Whether a config.json is an adapted causal LM's (it holds the ``ddlm_diffusion`` entry)."""
    return isinstance(config.get(CONFIG_KEY), dict)


def load_adapted(path: str | os.PathLike, *, num_tokenizer_tokens: int | None = None, dtype=None, device=None,
                 device_map=None, noise=None) -> MaskedDiffusionModel:
    """A directory written by ``save_adapted`` / ``MaskedDiffusionModel.save_pretrained`` (or its hub id) ->
    ``MaskedDiffusionModel`` (no re-resizing: the saved embeddings hold the mask row). num_tokenizer_tokens: the length
    of the tokenizer used with it; rows from the causal LM's tokenizer size (config entry) or from it on are banned."""
    local = _local(path)
    config = _read_config(local)
    entry = config.get(CONFIG_KEY)
    if not isinstance(entry, dict) or "mask_token_id" not in entry:
        raise ValueError(f"{path}/config.json has no {CONFIG_KEY!r} entry with a mask_token_id: not an adapted causal LM")
    check_causal_config(config, os.fspath(path))
    model = _load_causal(local, dtype, device_map)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if int(entry["mask_token_id"]) != vocab_size - 1:
        raise ValueError(f"{path}: the {CONFIG_KEY} mask_token_id {entry['mask_token_id']} is not the last of the "
                         f"{vocab_size} embedding rows")
    tokens = int(entry.get("tokenizer_tokens", vocab_size - 1))
    if num_tokenizer_tokens is not None:
        tokens = min(tokens, num_tokenizer_tokens)
    adapted = wrap_adapted(model, num_tokenizer_tokens=tokens, shift_logits=bool(entry.get("shift_logits", True)), noise=noise)
    return adapted if device_map is not None else adapted.to(device or "cpu")
