"""Import MDLM checkpoints (Sahoo et al., "Simple and Effective Masked Diffusion Language Models") as ``DDLMForDiffusion``.

MDLM's network is SEDD's DiT under the prefix ``backbone.``, so SEDD's renaming applies
(``ddlm.models.sedd``). Its SUBS parameterisation predicts p(x0 | x_t) over the N real tokens (mask
column -inf, log-softmax; an unmasked position keeps its token): that is ddlm's time-independent
absorbing model (``time_conditioning=False``), whose log-scores are log p(y | x_t) - log(e^sigma_bar - 1)
at masked positions. Time conditioning follows the checkpoint's config: MDLM trained without it (its
default, and mdlm-owt) feeds sigma = 0 to its time embedding, so its adaLN conditioning is the constant
silu(sigma_map(0)), which becomes ``cond_embed.weight`` (computed in float64, stored in the weights'
dtype); MDLM trained with it feeds sigma_bar(t) as SEDD does, and becomes a time-conditioned model with
``predict_x0=True`` (the same SUBS head) whose time embedding is ``sigma_map``. Float64 weights give a
float64 model, any other a float32 one. Schedule: MDLM's log-linear noise (eps 1e-3). The mask is the
last id N, as MDLM sets it for tokenizers without a mask token (GPT-2 for OpenWebText). Sources:

* the hub layout of ``kuleshov-group/mdlm-owt``: ``config.json`` (model_type "mdlm"; vocab_size with the
  mask, hidden_dim, cond_dim, n_blocks, n_heads, dropout, model_length, time_conditioning) and
  ``model.safetensors`` or ``pytorch_model.bin`` with keys ``backbone.*``; a hub repo id is downloaded;
* a Lightning checkpoint ``.ckpt`` of the MDLM repository (``state_dict`` with keys ``backbone.*``, and
  ``ema.shadow_params`` in the backbone's parameter order), EMA weights by default, with the run config
  ``<run>/.hydra/config.yaml`` (or ``config=``). Lightning pickles ``hyper_parameters`` (MDLM's omegaconf
  config, its tokenizer) beside the tensors, which ``torch.load(weights_only=True)`` refuses; the file is
  read with ``ddlm.core.safe_pickle.torch_load_inert`` instead, which rebuilds tensors, storages and plain
  containers as that loader does and turns every other pickled global (omegaconf, tokenizer and Lightning
  classes, or ``os.system``) into an inert record, never importing or calling it. Only ``state_dict`` and
  ``ema`` are used; the records are ignored. Every other pickle (``pytorch_model.bin``) is read with
  ``torch.load(weights_only=True)`` as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.manifest import write_model_manifest
from ..core.safe_pickle import torch_load_inert
from .configuration import DDLMConfig
from .modeling import DDLMForDiffusion, timestep_embedding
from .sedd import (
    SEDD_MLP_RATIO,
    SEDD_ROTARY_BASE,
    SEDD_TIME_FEATURES,
    config_field,
    load_sedd_state,
    local_source,
    read_config,
    read_hub_weights,
    run_config,
    sedd_parameter_names,
    sedd_sources,
    tensor_dict,
    with_ema,
)

FAMILY = "MDLM"
MODEL_TYPE = "mdlm"  # config.json's model_type (architectures ["MDLM"]) of the hub layout
PREFIX = "backbone."
EMBEDDING = PREFIX + "vocab_embed.embedding"
SIGMA_MAP = [PREFIX + f"sigma_map.mlp.{i}.{part}" for i in (0, 2) for part in ("weight", "bias")]
LOGLINEAR_EPS = 1e-3  # MDLM's LogLinearNoise() default, the only one its configs use
MASKED_TOKENIZERS = ("bert-base-uncased", "text8")  # tokenizers with a mask token of their own (not id N)
RUN_CHOICES = {"parameterization": ("subs",), "backbone": ("dit",), "noise.type": ("loglinear",)}


def is_mdlm_config(config: dict) -> bool:
    """Whether a config.json declares MDLM's hub layout: ``model_type`` "mdlm" (any case) or ``architectures`` holding "MDLM"."""
    architectures = config.get("architectures")
    return (str(config.get("model_type", "")).lower() == MODEL_TYPE
            or (isinstance(architectures, list) and FAMILY in architectures))


def is_mdlm_source(path: str | os.PathLike) -> bool:
    """True for a local MDLM source: a ``.ckpt`` file, or a directory whose config.json ``is_mdlm_config``
    (a hub repo id is not looked up: download it, or name the format)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".ckpt"
    try:
        values = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and is_mdlm_config(values)


def convert_mdlm(source: str | os.PathLike, out: str | os.PathLike, *, ema: bool = True,
                 config: str | os.PathLike | None = None) -> DDLMForDiffusion:
    """Convert an MDLM checkpoint to a ``DDLMForDiffusion`` saved (safetensors, manifest) in ``out``; returns it (eval mode).

    source, ema, config: as ``read_mdlm``.
    """
    model = read_mdlm(source, ema=ema, config=config)
    model.save_pretrained(out)
    write_model_manifest(out)
    return model


def read_mdlm(source: str | os.PathLike, *, ema: bool = True,
              config: str | os.PathLike | None = None) -> DDLMForDiffusion:
    """The ``DDLMForDiffusion`` (eval mode) of an MDLM checkpoint.

    source: a hub-layout directory, a Lightning ``.ckpt`` or a hub repo id ("owner/name").
    ema: for a ``.ckpt``, load its EMA shadow weights (else the raw ``state_dict``); hub weights are used as they are.
    config: the config (.json hub config or .yaml run config) to use instead of the one found next to the weights.
    """
    path = local_source(source, "an MDLM hub directory, a Lightning checkpoint .ckpt")
    if path.is_dir():
        settings = _hub_settings(read_config(Path(config) if config is not None else path / "config.json", FAMILY))
        return _build(settings, read_hub_weights(path, FAMILY))
    settings = _run_settings(read_config(run_config(path, config, ".ckpt"), FAMILY))
    return _build(settings, _read_lightning(path, ema, settings["n_blocks"]))


def _hub_settings(config: dict) -> dict:
    """The network settings of a hub config.json (MDLM's ``MDLMConfig`` fields)."""
    return dict(states=_field(config, "vocab_size", int), hidden_size=_field(config, "hidden_dim", int),
                cond_dim=_field(config, "cond_dim", int), n_blocks=_field(config, "n_blocks", int),
                n_heads=_field(config, "n_heads", int), dropout=_field(config, "dropout", float),
                length=_field(config, "model_length", int, 1024),
                time_conditioning=_field(config, "time_conditioning", bool, False))


def _run_settings(config: dict) -> dict:
    """The network settings of an MDLM run config (hydra), checked to be a SUBS DiT with the mask last."""
    for name, allowed in RUN_CHOICES.items():
        if (value := _field(config, name, str)) not in allowed:
            raise ValueError(f"MDLM config {name} must be {' or '.join(map(repr, allowed))} to convert, got {value!r}")
    tokenizer = _field(config, "data.tokenizer_name_or_path", str, "")
    if tokenizer in MASKED_TOKENIZERS:
        raise ValueError(f"MDLM run on tokenizer {tokenizer!r} uses that tokenizer's own mask id; ddlm needs the mask last")
    return dict(states=None, hidden_size=_field(config, "model.hidden_size", int),
                cond_dim=_field(config, "model.cond_dim", int), n_blocks=_field(config, "model.n_blocks", int),
                n_heads=_field(config, "model.n_heads", int), dropout=_field(config, "model.dropout", float),
                length=_field(config, "model.length", int, 1024), time_conditioning=_field(config, "time_conditioning", bool))


def _field(config: dict, dotted: str, kind: type, default=None):
    return config_field(config, dotted, kind, default, FAMILY)


def _read_lightning(path: Path, ema: bool, n_blocks: int) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an MDLM Lightning checkpoint, with the EMA weights put in if ``ema``."""
    checkpoint = torch_load_inert(path)  # hyper_parameters (omegaconf, tokenizer) become inert placeholders
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not an MDLM Lightning checkpoint (a dict with 'state_dict' and 'ema')")
    state = tensor_dict(checkpoint["state_dict"], f"{path}['state_dict']")
    if not ema:
        return state
    names = [PREFIX + name for name in sedd_parameter_names(n_blocks)]
    return with_ema(state, checkpoint.get("ema"), names, path, FAMILY)


def _build(settings: dict, state: dict[str, torch.Tensor]) -> DDLMForDiffusion:
    """An absorbing x0-predicting ``DDLMForDiffusion`` holding an MDLM state dict (keys ``backbone.*``)."""
    config = _ddlm_config(settings, state)
    float64 = EMBEDDING in state and state[EMBEDDING].dtype == torch.float64
    model = DDLMForDiffusion(config).to(torch.float64 if float64 else torch.float32)
    sources = sedd_sources(config.num_hidden_layers, PREFIX)
    if config.time_conditioning:  # sigma_map is the time embedding, renamed as SEDD's
        load_sedd_state(model, state, family=FAMILY, prefix=PREFIX, sources=sources)
        return model.eval()
    absent = ", ".join(key for key in SIGMA_MAP if key not in state)
    sources["cond_embed.weight"] = f"silu(sigma_map(0)), lacking {absent}"
    rest = {key: value for key, value in state.items() if key not in SIGMA_MAP}
    derived = _constant_condition(state, config.cond_dim, model.dtype)
    load_sedd_state(model, rest, family=FAMILY, prefix=PREFIX, derived=derived, sources=sources)
    return model.eval()


def _ddlm_config(settings: dict, state: dict[str, torch.Tensor]) -> DDLMConfig:
    """The ``DDLMConfig`` of MDLM's network settings (the vocabulary from the weights where the config lacks it)."""
    states = settings["states"] or (state[EMBEDDING].shape[0] if EMBEDDING in state else None)
    if states is None:
        raise ValueError(f"MDLM weights lack {EMBEDDING}, which gives the vocabulary size")
    return DDLMConfig(
        vocab_size=states - 1, process="absorbing", schedule="loglinear", eps=LOGLINEAR_EPS,
        hidden_size=settings["hidden_size"], num_attention_heads=settings["n_heads"],
        num_hidden_layers=settings["n_blocks"], cond_dim=settings["cond_dim"], dropout=settings["dropout"],
        max_position_embeddings=settings["length"], time_embed_dim=SEDD_TIME_FEATURES, mlp_ratio=SEDD_MLP_RATIO,
        rotary_base=SEDD_ROTARY_BASE, tie_word_embeddings=False, time_conditioning=settings["time_conditioning"],
        predict_x0=True,
    )


def _constant_condition(state: dict[str, torch.Tensor], cond_dim: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{"cond_embed.weight": silu(sigma_map(0)) [cond_dim]} from MDLM's time MLP (computed in float64), or {} if a
    tensor of it is missing (the load then names it)."""
    if not all(key in state for key in SIGMA_MAP):
        return {}
    shapes = [(cond_dim, SEDD_TIME_FEATURES), (cond_dim,), (cond_dim, cond_dim), (cond_dim,)]
    for key, shape in zip(SIGMA_MAP, shapes):
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(state[key].shape)}, expected {shape} (cond_dim={cond_dim})")
    w1, b1, w2, b2 = (state[key].double() for key in SIGMA_MAP)
    features = timestep_embedding(torch.zeros(1), SEDD_TIME_FEATURES).double()[0]  # [cos 0 | sin 0] = [1.. | 0..]
    return {"cond_embed.weight": F.silu(w2 @ F.silu(w1 @ features + b1) + b2).to(dtype)}
