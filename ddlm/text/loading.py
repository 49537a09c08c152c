"""Loading a saved model directory (or hub id) and its tokenizer, for ``ddlm.pipeline`` and ``ddlm.evaluation``
(which re-exports these names)."""

from __future__ import annotations

import contextlib
import os

import torch

from ..core.checks import check_local_path, looks_like_path
from ..models import DDLMForDiffusion
from ..models.families import model_family
from ..models.masked_diffusion import MaskedDiffusionModel


def check_vocabulary(model, tokenizer) -> None:
    """The tokenizer must be the one the model was trained with: exactly its real tokens (an open-weight model's
    vocabulary may be longer than its tokenizer: those rows are never drawn, ``MaskedDiffusionModel``)."""
    if isinstance(model, MaskedDiffusionModel):
        if len(tokenizer) > model.vocab_size or bool(model.drawable[len(tokenizer):].any()):
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the {model.family} model predicts {model.vocab_size} "
                             "(ids past the tokenizer must be banned); use the tokenizer the model was trained with")
        return
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model has {model.config.vocab_size}; "
                         "use the tokenizer the model was trained with")


@contextlib.contextmanager
def loading_progress(enabled: bool):
    """transformers' progress bars ("Loading weights", "Writing model shards", downloads) left as they are (``enabled``) or turned off for
    the block, the previous setting restored afterwards."""
    import warnings

    from huggingface_hub import utils as hub
    from transformers.utils import logging

    if enabled or not logging.is_progress_bar_enabled():
        yield
        return
    hub_was_disabled = hub.are_progress_bars_disabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():  # the hub warns when HF_HUB_DISABLE_PROGRESS_BARS pins its own setting
            warnings.simplefilter("ignore")
            logging.enable_progress_bar()
            if hub_was_disabled:
                hub.disable_progress_bars()


def load_model(path: str | os.PathLike, *, tokenizer=None, device=None, dtype: torch.dtype | None = None, device_map=None,
               progress: bool = True):
    """A model directory, hub id or MDLM ``.ckpt`` -> (model in eval mode, tokenizer), of any family
    ``ddlm.models.families`` recognises: a ddlm model (diffusion or AR) as a ``DDLMForDiffusion``, the open-weight
    families as a ``MaskedDiffusionModel`` (MDLM as a converted ``DDLMForDiffusion``). No code from the directory runs.
    tokenizer: overrides the directory's own. dtype: the weights' dtype (default: as saved, float32 for ddlm models).
    device_map: instead of ``device``, spread the weights over devices as transformers does ("auto" needs accelerate);
    every family loads its weights straight to their device (an 8B model in bfloat16 fits one 24 GB GPU).
    progress=False: no "Loading weights" bar from transformers."""
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    family = model_family(path)
    if family in ("llada", "dream", "adapted-causal") and not os.path.exists(os.path.expanduser(os.fspath(path))):
        path = download_model(path)
    if family != "ddlm" and tokenizer is None:
        tokenizer = load_tokenizer(os.path.dirname(os.fspath(path)) if family == "mdlm" and os.path.isfile(path) else path)
    with loading_progress(progress):
        model = load_network(family, path, tokenizer, device=device, dtype=dtype, device_map=device_map)
    model = (model if device_map is not None else model.to(device or "cpu")).eval()
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    check_vocabulary(model, tokenizer)
    return model, tokenizer


def download_model(repo_id: str) -> str:
    """A hub repository's config, weights and tokenizer files (no code) in the local cache -> its directory."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])


def load_network(family: str, path, tokenizer, *, device=None, dtype: torch.dtype | None = None, device_map=None):
    """The model of one family (``model_family``); the tokenizer sizes the banned rows of the open-weight families."""
    options = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}
    if family == "ddlm":
        return DDLMForDiffusion.from_pretrained(path, **options)
    if family == "masked-lm":
        from ..models.masked_lm import load_masked_lm

        return load_masked_lm(path, tokenizer, **options)
    if family == "mdlm":
        from ..models.mdlm import read_mdlm

        if device_map is not None:
            raise ValueError("device_map is not supported for MDLM models (small enough for one device); pass device=")
        return read_mdlm(path).to(dtype=dtype)
    if family == "adapted-causal":
        from ..models.adapted_causal import load_adapted

        return load_adapted(path, num_tokenizer_tokens=len(tokenizer), device=device, **options)
    if family == "llada":
        from ..models.llada import load_llada as load
    else:
        from ..models.dream import load_dream as load
    return load(path, num_tokenizer_tokens=len(tokenizer), device=device, **options)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


# Tokenizers that a published model names as its own code but that are a transformers class under another name.
NATIVE_TOKENIZERS = {"DreamTokenizer": "Qwen2Tokenizer"}  # Dream: Qwen2's byte-level BPE and its added tokens


def tokenizer_class(path: str):
    """The class that reads a tokenizer directory: transformers' AutoTokenizer, or for a tokenizer that names its
    own code (``auto_map``) the transformers class it equals (``NATIVE_TOKENIZERS``)."""
    import json

    import transformers

    config = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            declared = json.load(f).get("tokenizer_class")
        if declared in NATIVE_TOKENIZERS:
            return getattr(transformers, NATIVE_TOKENIZERS[declared])
    return transformers.AutoTokenizer


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer directory or hub id (never running code it names), or a ValueError naming the directory
    and its tokenizer files."""
    check_local_path("tokenizer", path)
    if looks_like_path(os.fspath(path)):
        path = os.path.expanduser(path)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer of the config's model type here: a wrong vocabulary, silently
        raise no_tokenizer(path)
    try:
        return tokenizer_class(path).from_pretrained(path, trust_remote_code=False)
    except Exception as error:  # missing or corrupt files; the tokenizers library raises bare Exceptions for some
        if not os.path.isdir(path) and isinstance(error, OSError):
            raise  # a hub id: transformers says what is missing (or that the hub cannot be reached)
        files = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(path, name))]
        if not os.path.isdir(path) or not files:
            raise no_tokenizer(path) from error
        raise ValueError(f"cannot load the tokenizer saved in {path} ({', '.join(files)}): "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def no_tokenizer(path) -> ValueError:
    return ValueError(f"{path} holds no tokenizer (no {' or '.join(TOKENIZER_FILES[:2])}); pass tokenizer= "
                      "(ddlm CLI: --tokenizer; SEDD models use the GPT-2 tokenizer)")
