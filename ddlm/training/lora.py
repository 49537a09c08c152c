"""LoRA adapters for ddlm score models through ``peft`` (the optional extra ``pip install 'ddlm[peft]'``).

``add_lora`` wraps chosen linear layers of a model in place: a layer y = W x (W [out, in]) becomes
y = W x + (alpha / rank) * B A x with A [rank, in] and B [out, rank] trainable and everything else
frozen; B starts at zero, so outputs are unchanged until training moves it. The model stays the same
object (its class, ``.graph``, ``.noise``, ``.config`` and forward signature, ``positions=`` included),
so the training loop, samplers and bounds use it as before. ``merge_lora`` folds B A into W and puts
the plain layers back (the state dict then has the original names: ``save_pretrained`` writes an
ordinary model); ``save_adapter`` / ``load_adapter`` keep only the adapters, in peft's file format
(``adapter_config.json`` + ``adapter_model.safetensors``).

Target names follow peft: a name matches a module whose dotted path equals it or ends with ``.name``
(``"qkv"`` every attention projection, ``"layers.0.attn.qkv"`` one of them).
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name: the one adapter ddlm injects
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"  # peft's file names
SAVED_PREFIX = "base_model.model."  # peft's prefix of saved adapter tensor names (a PeftModel's own paths)

# Default target modules per kind of network, tried in this order: the first whose every name occurs among the
# model's linear layers applies. Attention and MLP projections; never adaLN modulations, embeddings or output heads.
DEFAULT_TARGETS = {
    "ddlm": ("qkv", "out", "fc1", "fc2"),  # DDLMForDiffusion
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),  # Llama / Qwen2 layers (LLaDA, Dream)
    "bert": ("query", "key", "value", "dense"),  # BERT / RoBERTa-style masked LMs
    "gpt2": ("c_attn", "c_proj", "c_fc"),  # GPT-2-style networks (transformers Conv1D)
}


def _peft():
    """The peft package, or ImportError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs the peft package: pip install 'ddlm[peft]'") from None
    return peft


def _conv1d_class():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def _is_lora_layer(module: nn.Module) -> bool:
    """True for a layer peft's LoRA wrapped (it holds ``base_layer`` and ``lora_A``)."""
    return hasattr(module, "base_layer") and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)


def _wrappable(module: nn.Module) -> bool:
    """A plain linear layer LoRA can wrap: nn.Linear (or a subclass keeping its forward) or transformers' Conv1D.
    Subclasses with their own forward (DDLM's adaLN ``Modulation`` returns chunks) are not."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    return isinstance(module, _conv1d_class())


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Dotted path -> linear layer (``_wrappable`` ones), a LoRA-wrapped layer standing for its base layer."""
    found, inside = {}, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue  # the base layer and the adapters of a wrapped layer
        if _is_lora_layer(module):
            inside.append(name)
            found[name] = module.get_base_layer()
        elif _wrappable(module):
            found[name] = module
    return found


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def _matches(path: str, target: str) -> bool:
    """peft's rule for a target name in a list: the module's dotted path equals it or ends with ``.target``."""
    return path == target or path.endswith("." + target)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Dotted path -> each LoRA-wrapped layer of the model."""
    return {name: module for name, module in model.named_modules() if _is_lora_layer(module)}


def _is_lora_parameter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def default_targets(model: nn.Module) -> list[str]:
    """The ``DEFAULT_TARGETS`` entry whose every name occurs among the model's linear layers (leaf names), in the
    order of that table; ValueError when none does (then the recipe must name ``finetune.lora_target_modules``)."""
    leaves = {_leaf(name) for name in _linear_modules(model)}
    for names in DEFAULT_TARGETS.values():
        if leaves.issuperset(names):
            return list(names)
    raise ValueError(f"finetune.lora_target_modules: no default LoRA targets for {type(model).__name__}; name its "
                     f"linear modules explicitly, from: {sorted(leaves)}")


def resolve_targets(model: nn.Module, target_modules: list[str] | None = None) -> list[str]:
    """The dotted paths of the linear layers the target names select (``default_targets`` for None), sorted.
    ValueError when a name matches no linear layer."""
    if target_modules is None:
        target_modules = default_targets(model)
    if isinstance(target_modules, str) or not all(isinstance(t, str) and t for t in target_modules) or not target_modules:
        raise ValueError(f"finetune.lora_target_modules must be a non-empty list of module names, got {target_modules!r}")
    linear = _linear_modules(model)
    for target in target_modules:
        if not any(_matches(path, target) for path in linear):
            raise ValueError(f"finetune.lora_target_modules: {target!r} matches no module of the model; its linear modules "
                             f"are named: {sorted({_leaf(path) for path in linear})}")
    return sorted(path for path in linear if any(_matches(path, target) for target in target_modules))


def _check_settings(rank, alpha, dropout) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"finetune.lora_rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"finetune.lora_alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"finetune.lora_dropout must lie in [0, 1), got {dropout!r}")


def _lora_config(rank: int, alpha: float, dropout: float, target_modules, fan_in_fan_out: bool = False):
    peft = _peft()
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none",
                           fan_in_fan_out=fan_in_fan_out, init_lora_weights=True)


def add_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0,
             target_modules: list[str] | None = None) -> nn.Module:
    """Wrap the target linear layers of ``model`` in LoRA adapters in place and return ``model`` itself.

    rank: r, the inner width of B A (A [r, in], B [out, r]); alpha: the update is scaled by alpha / r; dropout:
    the probability of zeroing the adapters' input in training mode. target_modules: names as in peft (see the
    module docstring); None: ``default_targets(model)``. Every parameter but the adapters' is frozen
    (requires_grad False); B = 0 at first, so the outputs equal the original model's exactly. The adapters are at
    least float32 whatever the base layer's dtype (peft would give them a bfloat16 base's dtype, whose rounding loses
    small optimizer updates); each layer computes them in that dtype and returns its base layer's dtype.
    """
    peft = _peft()
    _check_settings(rank, alpha, dropout)
    if _lora_layers(model):
        raise ValueError("finetune.lora_target_modules: the model already has LoRA adapters (merge_lora it first)")
    paths = resolve_targets(model, target_modules)
    linear = _linear_modules(model)
    conv1d = all(isinstance(linear[path], _conv1d_class()) for path in paths)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    # An anchored pattern of the exact paths: peft wraps these layers and nothing else of the same leaf name.
    pattern = "(?:" + "|".join(re.escape(path) for path in paths) + ")"
    peft.inject_adapter_in_model(_lora_config(rank, float(alpha), float(dropout), pattern, conv1d), model, adapter_name=ADAPTER)
    if hasattr(model, "peft_config"):
        del model.peft_config  # peft's bookkeeping: a PreTrainedModel would treat it as a loaded transformers adapter
    for layer in _lora_layers(model).values():
        layer.train(layer.get_base_layer().training)  # peft's new dropout modules start in training mode
        for adapters in (layer.lora_A, layer.lora_B):
            adapters.to(torch.promote_types(layer.get_base_layer().weight.dtype, torch.float32))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(_is_lora_parameter(name))
    model._lora_unfrozen = trainable  # restored by merge_lora
    return model


def merge_lora(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Fold every adapter into its base weight (W <- W + (alpha / r) B A) and put the plain base layers back in
    place; returns ``model``, whose state dict then has the original names. Parameters trainable before
    ``add_lora`` are trainable again. dtype: cast the whole model to it first (torch.float32 keeps an update that is
    smaller than a 16-bit weight's rounding; None: fold in the weights' own dtype)."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("merge_lora: the model has no LoRA adapters (add_lora or load_adapter first)")
    if dtype is not None:
        model.to(dtype)
    for path, layer in layers.items():
        layer.merge(safe_merge=True)
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, layer.get_base_layer())
    unfrozen = set(getattr(model, "_lora_unfrozen", ()))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in unfrozen)
    if hasattr(model, "_lora_unfrozen"):
        del model._lora_unfrozen
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with requires_grad (after ``add_lora``: the adapters only), in ``model.parameters()`` order:
    what the optimizer and the EMA receive."""
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under their names in ``model.state_dict()`` (``...qkv.lora_A.default.weight``: A [r, in],
    ``...lora_B.default.weight``: B [out, r]), as CPU clones."""
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items() if _is_lora_parameter(name)}


def _saved_name(name: str) -> str:
    """A model's adapter tensor name -> peft's saved name (prefix added, adapter name dropped)."""
    return SAVED_PREFIX + name.replace(f".{ADAPTER}.", ".")


def _model_name(saved: str) -> str | None:
    """peft's saved adapter tensor name -> the model's (None for a name outside peft's layout)."""
    if not saved.startswith(SAVED_PREFIX):
        return None
    parts = saved[len(SAVED_PREFIX):].split(".")
    at = next((i for i, part in enumerate(parts) if part.startswith("lora_")), None)
    return None if at is None else ".".join(parts[:at + 1] + [ADAPTER] + parts[at + 1:])


def _check_injected(model: nn.Module, rank: int, alpha: float, target_modules) -> None:
    """ValueError unless the model's adapters are exactly those add_lora(rank, alpha, target_modules) makes."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("save_adapter: the model has no LoRA adapters (add_lora first)")
    wanted = resolve_targets(model, target_modules)
    if sorted(layers) != wanted:
        raise ValueError(f"finetune.lora_target_modules {target_modules!r} selects {wanted}, but the model's LoRA layers are "
                         f"{sorted(layers)}")
    for path, layer in layers.items():
        if layer.r[ADAPTER] != rank:
            raise ValueError(f"finetune.lora_rank is {rank}, but {path} has rank {layer.r[ADAPTER]}")
        if layer.lora_alpha[ADAPTER] != alpha:
            raise ValueError(f"finetune.lora_alpha is {alpha}, but {path} has alpha {layer.lora_alpha[ADAPTER]}")


def save_adapter(model: nn.Module, directory: str | os.PathLike, *, rank: int, alpha: float, dropout: float,
                 target_modules: list[str] | None) -> None:
    """Write the adapters to ``directory`` in peft's format: ``adapter_config.json`` (a LoraConfig with these settings;
    target_modules None: the defaults) and ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``
    ...). The settings must be those the adapters were made with (checked)."""
    from safetensors.torch import save_file

    _peft()
    _check_settings(rank, alpha, dropout)
    if target_modules is None:
        target_modules = default_targets(model)
    _check_injected(model, rank, alpha, target_modules)
    linear = _linear_modules(model)
    conv1d = all(isinstance(linear[path], _conv1d_class()) for path in _lora_layers(model))
    os.makedirs(directory, exist_ok=True)
    _lora_config(rank, float(alpha), float(dropout), list(target_modules), conv1d).save_pretrained(os.fspath(directory))
    tensors = {_saved_name(name): t.contiguous() for name, t in adapter_state_dict(model).items()}
    save_file(tensors, os.path.join(os.fspath(directory), WEIGHTS_FILE), metadata={"format": "pt"})


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """``add_lora`` with the settings of ``directory/adapter_config.json``, then its adapter weights loaded (strict:
    ValueError naming missing or unexpected tensors); returns ``model``."""
    from safetensors.torch import load_file

    _peft()
    directory = os.fspath(directory)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, file)):
            raise ValueError(f"load_adapter: {os.path.join(directory, file)} does not exist (not a saved LoRA adapter)")
    with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as handle:
        config = json.load(handle)
    unsupported = {key: config.get(key) for key, plain in (("peft_type", "LORA"), ("bias", "none"), ("use_dora", False),
                                                          ("use_rslora", False), ("rank_pattern", {}), ("alpha_pattern", {}))
                   if config.get(key, plain) not in (plain, None)}
    if unsupported:
        raise ValueError(f"load_adapter: {directory} holds a peft adapter with settings ddlm does not support: {unsupported}")
    targets = config.get("target_modules")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"load_adapter: finetune.lora_target_modules in {CONFIG_FILE} must be a list of names, got {targets!r}")
    add_lora(model, rank=config["r"], alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0),
             target_modules=sorted(targets))
    saved = load_file(os.path.join(directory, WEIGHTS_FILE))
    loaded = {_model_name(name): (name, t) for name, t in saved.items()}
    expected = adapter_state_dict(model)
    missing = sorted(_saved_name(name) for name in expected if name not in loaded)
    unexpected = sorted(name for key, (name, _) in loaded.items() if key not in expected)
    if missing or unexpected:
        raise ValueError(f"load_adapter: {WEIGHTS_FILE} in {directory} does not match the model's adapters; "
                         f"missing: {missing}; unexpected: {unexpected}")
    shapes = [f"{name} (file {list(t.shape)}, model {list(expected[key].shape)})"
              for key, (name, t) in loaded.items() if t.shape != expected[key].shape]
    if shapes:
        raise ValueError(f"load_adapter: adapter shapes differ: {', '.join(shapes)}")
    model.load_state_dict({key: t for key, (_, t) in loaded.items()}, strict=False)
    return model
