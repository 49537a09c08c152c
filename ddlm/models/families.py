"""Which model family a directory (or hub id) holds, read from its ``config.json`` without running any of its code.

Families: ``ddlm`` (ddlm's own models, converted SEDD models), ``mdlm`` (MDLM's hub layout, or a
Lightning ``.ckpt`` file), ``llada`` and ``dream`` (their published layouts, implemented natively),
``masked-lm`` (any transformers masked LM), ``adapted-causal`` (a GPT-2 / Llama / Qwen2 causal LM turned into
a diffusion model, ``ddlm.models.adapted_causal``: config.json holds a ``ddlm_diffusion`` entry). Anything else is
one ValueError naming what is supported: a causal LM (pointing at finetune.adapt), an unknown architecture, a
``model_type`` that only code in the directory defines.
"""

from __future__ import annotations

import os

from ..core.checks import looks_like_path
from .modeling import read_config_file

SUPPORTED = ("ddlm models (ddlm train, ddlm convert), MDLM (hub layout or Lightning .ckpt), LLaDA (model_type 'llada'), "
             "Dream (model_type 'Dream'), and transformers masked LMs (architectures *ForMaskedLM: BERT, RoBERTa, "
             "DistilBERT, ModernBERT, ...), and causal LMs adapted to diffusion (config.json entry 'ddlm_diffusion')")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def read_config(path: str | os.PathLike) -> dict:
    """config.json of a model directory or hub id, as a dict (ValueError if it is missing or not JSON)."""
    path = os.fspath(path)
    if looks_like_path(path) and not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(f"no model directory at {path}")
    if looks_like_path(path) or os.path.isdir(path):
        file = os.path.join(os.path.expanduser(path), "config.json")
        if not os.path.isfile(file):
            raise ValueError(f"{path} is not a ddlm model directory (no config.json) nor another model ddlm loads: {SUPPORTED}")
    else:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(path, "config.json")
    return read_config_file(file)


def family_of_config(config: dict, where: str = "the model") -> str:
    """The family a config.json declares (see the module docstring), or a ValueError naming what is supported."""
    model_type = str(config.get("model_type", ""))
    architectures = [str(name) for name in config.get("architectures") or ()]
    if model_type == "ddlm":
        return "ddlm"
    if isinstance(config.get("ddlm_diffusion"), dict):  # before the causal-LM refusal: its architectures name the causal LM
        return "adapted-causal"
    if model_type.lower() == "llada" or "LLaDAModelLM" in architectures:
        return "llada"
    if model_type.lower() == "dream" or "DreamModel" in architectures:
        return "dream"
    if model_type.lower() == "mdlm" or "MDLM" in architectures:
        return "mdlm"
    if any(name.endswith("ForMaskedLM") for name in architectures):
        if "auto_map" in config and not _known_to_transformers(model_type):
            raise ValueError(f"{where} declares model_type {model_type!r}, which only code in its directory defines (auto_map); "
                             "ddlm never runs code from a model directory (no trust_remote_code)")
        return "masked-lm"
    named = f"model_type {model_type!r}, architectures {architectures}"
    if any(name.endswith(CAUSAL_SUFFIXES) for name in architectures):
        raise ValueError(f"{where} is a causal (autoregressive) LM ({named}); ddlm samples and bounds masked or diffusion LMs: "
                         f"{SUPPORTED}; start a diffusion model from it with a fine-tuning recipe (finetune.init_from and finetune.adapt: true)")
    if "auto_map" in config:
        raise ValueError(f"{where} ({named}) needs code from its own directory (auto_map); ddlm never runs it. Supported: {SUPPORTED}")
    raise ValueError(f"{where} is not a ddlm model directory ({named}) nor another model ddlm loads: {SUPPORTED}")


def _known_to_transformers(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def model_family(path: str | os.PathLike) -> str:
    """The family of a model directory, hub id or MDLM ``.ckpt`` file (see ``family_of_config``)."""
    name = os.fspath(path)
    if os.path.isfile(os.path.expanduser(name)):
        if name.endswith(".ckpt"):
            return "mdlm"
        raise ValueError(f"{name} is not a ddlm model directory but a file (a single file only for an MDLM Lightning .ckpt); "
                         f"supported: {SUPPORTED}")
    return family_of_config(read_config(name), name)
