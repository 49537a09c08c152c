"""Import official SEDD checkpoints (Lou et al., "Score Entropy Discrete Diffusion") as ``DDLMForDiffusion``.

SEDD's network is the same DiT-style ratio network as ours under other parameter names. A
checkpoint is read (safe loaders only), its config becomes a ``DDLMConfig``, every weight is
renamed and loaded strictly, and the model is written with ``save_pretrained`` and a manifest. Sources:

* a hub-mixin directory: ``config.json`` (SEDD's config dict) + ``model.safetensors`` or
  ``pytorch_model.bin``;
* a training checkpoint ``<run>/checkpoints/checkpoint_k.pth`` or
  ``<run>/checkpoints-meta/checkpoint.pth`` with the run config in ``<run>/.hydra/config.yaml``;
  its EMA weights by default;
* a hub repo id such as ``louaaron/sedd-small`` (downloaded, then read as a directory).

MDLM's network is the same DiT, so ``ddlm.models.mdlm`` uses these readers and this renaming too.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch

from ..core.manifest import write_model_manifest
from .configuration import DDLMConfig
from .modeling import DDLMForDiffusion, pickle_refused

SEDD_TIME_FEATURES = 256  # SEDD's sinusoidal sigma embedding size (fixed in its code)
SEDD_MLP_RATIO = 4
SEDD_ROTARY_BASE = 10_000.0
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference
GRAPHS = {"absorb": "absorbing", "uniform": "uniform"}
NOISES = ("loglinear", "geometric")

# SEDD key (full match) -> our key.
RENAMES = [
    (r"vocab_embed\.embedding", r"embed_tokens.weight"),
    (r"sigma_map\.mlp\.0\.(weight|bias)", r"time_embed.linear_1.\1"),
    (r"sigma_map\.mlp\.2\.(weight|bias)", r"time_embed.linear_2.\1"),
    (r"blocks\.(\d+)\.norm1\.weight", r"layers.\1.norm1.weight"),
    (r"blocks\.(\d+)\.attn_qkv\.weight", r"layers.\1.attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn_out\.weight", r"layers.\1.attn.out.weight"),
    (r"blocks\.(\d+)\.norm2\.weight", r"layers.\1.norm2.weight"),
    (r"blocks\.(\d+)\.mlp\.0\.(weight|bias)", r"layers.\1.mlp.fc1.\2"),
    (r"blocks\.(\d+)\.mlp\.2\.(weight|bias)", r"layers.\1.mlp.fc2.\2"),
    (r"blocks\.(\d+)\.adaLN_modulation\.(weight|bias)", r"layers.\1.modulation.\2"),
    (r"output_layer\.norm_final\.weight", r"final_norm.weight"),
    (r"output_layer\.linear\.(weight|bias)", r"lm_head.\1"),
    (r"output_layer\.adaLN_modulation\.(weight|bias)", r"final_modulation.\1"),
]
ROTARY_KEY = "rotary_emb.inv_freq"

# SEDD's trainable parameters in module definition order: the order of its EMA shadow list.
STEM_PARAMS = ["vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias",
               "sigma_map.mlp.2.weight", "sigma_map.mlp.2.bias"]
BLOCK_PARAMS = ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
                "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias"]
HEAD_PARAMS = ["norm_final.weight", "linear.weight", "linear.bias", "adaLN_modulation.weight", "adaLN_modulation.bias"]


def convert_sedd(source: str | os.PathLike, out: str | os.PathLike, *, ema: bool = True,
                 config: str | os.PathLike | None = None) -> DDLMForDiffusion:
    """Convert a SEDD checkpoint to a ``DDLMForDiffusion`` saved (safetensors) in ``out``; returns it (eval mode).

    source: a hub-mixin directory, a training checkpoint ``.pth`` or a hub repo id ("owner/name").
    ema: for a training checkpoint, load its EMA shadow weights (else the raw ``model`` weights);
    hub-mixin weights are used as they are.
    config: the SEDD config (.yaml or .json) to use instead of the one found next to the weights.
    """
    sedd_config, state = read_sedd(source, ema=ema, config=config)
    model = DDLMForDiffusion(ddlm_config(sedd_config, state))
    load_sedd_state(model, state)
    model.eval()
    model.save_pretrained(out)
    write_model_manifest(out)
    return model


def read_sedd(source: str | os.PathLike, *, ema: bool = True,
              config: str | os.PathLike | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(SEDD config dict, SEDD-layout state dict without any ``module.`` prefix) of a source."""
    path = local_source(source, "a SEDD checkpoint directory, a training checkpoint .pth")
    if path.is_dir():
        config = read_config(Path(config) if config is not None else path / "config.json")
        return config, read_hub_weights(path)
    config = read_config(run_config(path, config, ".pth"))
    return config, _read_training_checkpoint(path, ema, config_field(config, "model.n_blocks", int))


def local_source(source: str | os.PathLike, expected: str) -> Path:
    """The local path of ``source``: itself, or the snapshot of a hub repo id "owner/name" (``expected`` names the
    local kinds of source, for the error)."""
    path = Path(source)
    if path.exists():
        return path
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(source)):
        raise FileNotFoundError(f"{source}: no such file or directory (expected {expected} or a hub repo id 'owner/name')")
    return _download(str(source))


def run_config(checkpoint: Path, config: str | os.PathLike | None, suffix: str) -> Path:
    """``config`` if given, else the run config ``<run>/.hydra/config.yaml`` of ``<run>/checkpoints*/*<suffix>``."""
    if config is not None:
        return Path(config)
    path = checkpoint.parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no run config for {checkpoint}: expected {path} (the layout "
                                f"<run>/checkpoints[-meta]/*{suffix} with <run>/.hydra/config.yaml); pass config=")
    return path


def ddlm_config(sedd: dict, state: dict[str, torch.Tensor]) -> DDLMConfig:
    """The ``DDLMConfig`` of a SEDD config dict, checked against the weights' shapes."""
    graph, noise = config_field(sedd, "graph.type", str), config_field(sedd, "noise.type", str)
    if graph not in GRAPHS:
        raise ValueError(f"SEDD graph.type must be one of {sorted(GRAPHS)}, got {graph!r}")
    if noise not in NOISES:
        raise ValueError(f"SEDD noise.type must be one of {list(NOISES)}, got {noise!r}")
    schedule = {"eps": 1e-3} if noise == "loglinear" else {
        "sigma_min": config_field(sedd, "noise.sigma_min", float), "sigma_max": config_field(sedd, "noise.sigma_max", float)}
    config = DDLMConfig(
        vocab_size=config_field(sedd, "tokens", int),
        process=GRAPHS[graph],
        schedule=noise,
        **schedule,
        hidden_size=config_field(sedd, "model.hidden_size", int),
        num_attention_heads=config_field(sedd, "model.n_heads", int),
        num_hidden_layers=config_field(sedd, "model.n_blocks", int),
        cond_dim=config_field(sedd, "model.cond_dim", int),
        dropout=config_field(sedd, "model.dropout", float),
        scale_by_sigma=config_field(sedd, "model.scale_by_sigma", bool),
        max_position_embeddings=config_field(sedd, "model.length", int, default=1024),
        time_embed_dim=SEDD_TIME_FEATURES,
        mlp_ratio=SEDD_MLP_RATIO,
        rotary_base=SEDD_ROTARY_BASE,
        tie_word_embeddings=False,
    )
    expected = {
        "vocab_embed.embedding": (0, config.num_states, f"num_states for tokens={config.vocab_size}, graph {graph}"),
        "sigma_map.mlp.0.weight": (1, SEDD_TIME_FEATURES, "sigma embedding features"),
        "blocks.0.mlp.0.weight": (0, SEDD_MLP_RATIO * config.hidden_size, f"MLP width {SEDD_MLP_RATIO} x hidden_size"),
    }
    for key, (dim, size, what) in expected.items():
        if key in state and state[key].shape[dim] != size:
            raise ValueError(f"{key} has shape {tuple(state[key].shape)}, expected dim {dim} = {size} ({what})")
    return config


def load_sedd_state(model: DDLMForDiffusion, state: dict[str, torch.Tensor], *, family: str = "SEDD", prefix: str = "",
                    derived: dict[str, torch.Tensor] | None = None, sources: dict[str, str] | None = None) -> None:
    """Rename a SEDD-layout state dict and load it into ``model`` strictly (every key, every shape).

    One ValueError names every unmapped, missing and misshapen tensor. family: the source's name in
    messages; prefix: the prefix of the network's keys (MDLM: "backbone."); derived: entries already
    in our names (computed from the source's tensors); sources: our name -> the source tensor it
    comes from, shown beside a missing weight.
    """
    if prefix + ROTARY_KEY in state:
        _check_rotary(state[prefix + ROTARY_KEY], model.config.head_dim)
    mapped, unmapped = dict(derived or {}), []
    for key, tensor in state.items():
        if key == prefix + ROTARY_KEY:
            continue
        new = _rename(key.removeprefix(prefix)) if key.startswith(prefix) else None
        if new is None:
            unmapped.append(key)
        else:
            mapped[new] = tensor
    def named(key):
        return f"{key} ({sources[key]})" if key in (sources or {}) else key

    ours = model.state_dict()
    problems = []
    if unmapped:
        problems.append(f"{family} keys with no counterpart: {sorted(unmapped)}")
    if missing := sorted(ours.keys() - mapped.keys()):
        problems.append(f"weights missing from the checkpoint: {[named(key) for key in missing]}")
    if extra := sorted(mapped.keys() - ours.keys()):
        problems.append(f"checkpoint weights the model does not have: {extra}")
    problems += [f"{named(key)}: checkpoint shape {tuple(mapped[key].shape)}, model shape {tuple(ours[key].shape)}"
                 for key in sorted(mapped.keys() & ours.keys()) if mapped[key].shape != ours[key].shape]
    if problems:
        raise ValueError(f"{family} checkpoint does not match the model; " + "; ".join(problems))
    model.load_state_dict(mapped, strict=True)


def sedd_parameter_names(n_blocks: int) -> list[str]:
    """SEDD's trainable parameter names in ``named_parameters()`` order (its EMA list order; MDLM's DiT too)."""
    blocks = [f"blocks.{i}.{name}" for i in range(n_blocks) for name in BLOCK_PARAMS]
    return STEM_PARAMS + blocks + [f"output_layer.{name}" for name in HEAD_PARAMS]


def sedd_sources(n_blocks: int, prefix: str = "") -> dict[str, str]:
    """Our weight name -> its SEDD-layout name (with ``prefix``), for the parameters of ``n_blocks`` blocks."""
    return {_rename(name): prefix + name for name in sedd_parameter_names(n_blocks)}


def _rename(key: str) -> str | None:
    for pattern, replacement in RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _check_rotary(inv_freq: torch.Tensor, head_dim: int) -> None:
    """SEDD's rotary buffer must be the standard one we recompute: 1 / base^(2k/d), [d/2]."""
    standard = 1.0 / SEDD_ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if inv_freq.shape != standard.shape or not torch.allclose(inv_freq.double(), standard, rtol=1e-5, atol=0):
        raise ValueError(f"non-standard rotary embedding: {ROTARY_KEY} is not "
                         f"1/{SEDD_ROTARY_BASE:g}^(arange(0, {head_dim}, 2)/{head_dim})")


def config_field(config: dict, dotted: str, kind: type, default=None, family: str = "SEDD"):
    """``config["a"]["b"]`` for dotted ``"a.b"``, checked to be of ``kind`` (numeric strings such as "1e-4" read as float)."""
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            if default is not None:
                return default
            raise ValueError(f"{family} config lacks the required field {dotted!r}")
        value = value[part]
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool))
    if not ok:
        raise ValueError(f"{family} config field {dotted!r} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def read_config(path: Path, family: str = "SEDD") -> dict:
    """The mapping in a .json or .yaml config file."""
    if not path.is_file():
        raise FileNotFoundError(f"{family} config not found: expected {path}")
    if path.suffix == ".json":
        config = json.loads(path.read_text())
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        config = yaml.safe_load(path.read_text())
    else:
        raise ValueError(f"{family} config must be a .json or .yaml file, got {path}")
    if not isinstance(config, dict):
        raise ValueError(f"{family} config {path} is not a mapping")
    return config


def read_hub_weights(directory: Path, family: str = "SEDD") -> dict[str, torch.Tensor]:
    """The state dict of a hub directory's ``model.safetensors`` (else ``pytorch_model.bin``, read safely)."""
    for name in HF_WEIGHTS:
        if (directory / name).is_file():
            break
    else:
        raise FileNotFoundError(f"no {family} weights in {directory}: expected one of {list(HF_WEIGHTS)}")
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(directory / name)
    else:
        state = safe_torch_load(directory / name)
    return strip_ddp(tensor_dict(state, f"{directory / name}"))


def _read_training_checkpoint(path: Path, ema: bool, n_blocks: int) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a SEDD training checkpoint, with the EMA weights put in if ``ema``."""
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is not a SEDD training checkpoint (a dict with 'model', 'ema', 'optimizer', 'step')")
    state = strip_ddp(tensor_dict(checkpoint["model"], f"{path}['model']"))
    return with_ema(state, checkpoint.get("ema"), sedd_parameter_names(n_blocks), path) if ema else state


def with_ema(state: dict[str, torch.Tensor], ema_state, names: list[str], path: Path,
             family: str = "SEDD") -> dict[str, torch.Tensor]:
    """``state`` with its parameters ``names`` replaced by an EMA ``{'shadow_params': [...]}``'s list, in that order."""
    shadow = ema_state.get("shadow_params") if isinstance(ema_state, dict) else None
    if not isinstance(shadow, list):
        raise ValueError(f"{path} has no EMA weights (ema.shadow_params); convert with ema=False")
    if len(shadow) != len(names):
        n_blocks = sum(name.endswith("norm1.weight") for name in names)
        raise ValueError(f"{path}: EMA shadow_params has {len(shadow)} tensors, expected {len(names)} "
                         f"({family}'s parameters with n_blocks={n_blocks})")
    for name, tensor in zip(names, shadow):
        if name not in state:
            raise ValueError(f"{path}: {family} parameter {name} is missing from the checkpoint's state dict")
        if not isinstance(tensor, torch.Tensor) or tensor.shape != state[name].shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{path}: EMA weight for {name} is {got}, the model's is {tuple(state[name].shape)}")
    return {**state, **dict(zip(names, shadow))}


def safe_torch_load(path: Path):
    """torch.load restricted to tensors and plain containers: pickled code is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle_refused(str(path), error) from None


def tensor_dict(state, where: str) -> dict[str, torch.Tensor]:
    """``state`` as a dict, or a ValueError if it is not a dict of tensors."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where} is not a state dict of tensors")
    return dict(state)


def strip_ddp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DistributedDataParallel puts on every key."""
    if state and all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _download(repo_id: str) -> Path:
    """A local snapshot of a hub repo's config and weights."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", *HF_WEIGHTS]))
    except Exception as error:
        raise FileNotFoundError(f"{repo_id} is not a local path and its hub download failed: {error}") from error
