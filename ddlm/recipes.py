"""Training recipes: YAML files validated into dataclasses, with ``section.key=value`` overrides.

A recipe has four sections: ``model`` (a size preset plus any ``DDLMConfig`` field), ``tokenizer``,
``data`` (``ddlm.data.DataConfig``) and ``train`` (``TrainConfig``). Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .data import DataConfig
from .model import PRESETS, DDLMConfig

# The built-in recipes: the top-level recipes/ folder, installed as the package ddlm.builtin_recipes
# (pyproject.toml maps it); found through the import system, so a wheel and an editable install agree.
RECIPES_DIR = Path(resources.files("ddlm.builtin_recipes"))
OBJECTIVES = ("diffusion", "ar")
DECAYS = ("constant", "linear", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class ModelRecipe:
    """A size preset (``tiny``, ``small``, ``medium``) and overrides of ``DDLMConfig`` fields."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, vocab_size: int, block_size: int, objective: str) -> DDLMConfig:
        """The model config for a tokenizer of ``vocab_size`` tokens and blocks of ``block_size``."""
        values = {"max_position_embeddings": block_size, **self.overrides, "vocab_size": vocab_size}
        if objective == "ar":
            values["objective"] = "ar"
        config = DDLMConfig.from_preset(self.preset, **values)
        if block_size > config.max_position_embeddings:
            raise ValueError(f"data.block_size {block_size} exceeds model.max_position_embeddings {config.max_position_embeddings}")
        return config


@dataclass
class TokenizerRecipe:
    """A tokenizer by hub name or path, or a byte-level BPE of ``train_vocab_size`` trained on the corpus."""

    name: str | None = None
    train_vocab_size: int | None = None

    def __post_init__(self):
        if (self.name is None) == (self.train_vocab_size is None):
            raise ValueError("tokenizer: give exactly one of name (hub id or path) and train_vocab_size")


@dataclass
class TrainConfig:
    """The loop: batch sizes in sequences, learning-rate schedule in optimizer steps, intervals in steps."""

    objective: str = "diffusion"
    steps: int = 1000
    global_batch_size: int = 32  # sequences per optimizer step, over all processes and accumulation
    micro_batch_size: int = 32  # sequences per process per forward/backward
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    decay: str = "constant"  # after warm-up: constant, linear or cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    clip_grad_norm: float | None = 1.0
    ema: float = 0.9999  # 0 disables EMA weights
    t_min: float = 1e-3  # diffusion times are drawn from U[t_min, 1]
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    eval_blocks: int = 16  # validation blocks per evaluation
    eval_num_t: int = 16  # t samples per block of the likelihood bound
    sample_every: int = 500
    num_samples: int = 2
    sample_steps: int = 64
    save_every: int = 500
    keep_checkpoints: int = 2
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    output_dir: str = "runs/default"

    def __post_init__(self):
        self.betas = tuple(self.betas)
        checks = {
            "objective": self.objective in OBJECTIVES,
            "decay": self.decay in DECAYS,
            "mixed_precision": self.mixed_precision in MIXED_PRECISION,
            "steps": self.steps >= 1,
            "global_batch_size": self.global_batch_size >= 1,
            "micro_batch_size": self.micro_batch_size >= 1,
            "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "ema": 0 <= self.ema < 1,
            "t_min": 0 <= self.t_min < 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
        }
        for name in ("log_every", "eval_every", "sample_every", "save_every"):
            checks[name] = getattr(self, name) >= 1
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            choices = {"objective": OBJECTIVES, "decay": DECAYS, "mixed_precision": MIXED_PRECISION}
            raise ValueError("invalid train settings: " + ", ".join(
                f"{name}={getattr(self, name)!r}" + (f" (choose from {choices[name]})" if name in choices else "") for name in bad))

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per process per optimizer step; the global batch must split evenly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"train.global_batch_size {self.global_batch_size} is not divisible by "
                             f"micro_batch_size {self.micro_batch_size} x {world_size} processes")
        return self.global_batch_size // per_step


@dataclass
class Recipe:
    model: ModelRecipe
    tokenizer: TokenizerRecipe
    data: DataConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        model = {"preset": self.model.preset, **self.model.overrides}
        return {"model": model, "tokenizer": dataclasses.asdict(self.tokenizer), "data": dataclasses.asdict(self.data),
                "train": {**dataclasses.asdict(self.train), "betas": list(self.train.betas)}}


def _coerce(section: str, name: str, value, kind):
    """Check a value against its field's type; numbers YAML reads as strings ("1e-4") become floats.

    Only plain scalar types (and their unions with None) are checked; containers pass as given.
    """
    if value is None:
        return value
    options = set(typing.get_args(kind)) if isinstance(kind, types.UnionType) else {kind}
    options.discard(type(None))
    if float in options and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if options <= {float, int, str, bool} and not any(
            isinstance(value, option) and (option is bool or not isinstance(value, bool)) for option in options):
        raise ValueError(f"{section}.{name} must be {' or '.join(sorted(o.__name__ for o in options))}, got {value!r}")
    return value


def _build(cls, values: dict, section: str):
    """``cls(**values)``, refusing keys that are not fields of ``cls`` and values of the wrong type."""
    fields = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(values) - names):
        raise ValueError(f"unknown {section} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**{name: _coerce(section, name, value, fields[name]) for name, value in values.items()})


def recipe_from_dict(values: dict) -> Recipe:
    """Validate a recipe mapping (as read from YAML)."""
    if unknown := sorted(set(values) - {"model", "tokenizer", "data", "train"}):
        raise ValueError(f"unknown recipe sections {unknown}; valid: ['data', 'model', 'tokenizer', 'train']")
    model = dict(values.get("model") or {})
    preset = model.pop("preset", "tiny")
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    config_fields = {f.name for f in dataclasses.fields(DDLMConfig)} - {"vocab_size"}
    if unknown := sorted(set(model) - config_fields):
        raise ValueError(f"unknown model keys {unknown}; valid keys: preset and the DDLMConfig fields {sorted(config_fields)}")
    return Recipe(
        model=ModelRecipe(preset, model),
        tokenizer=_build(TokenizerRecipe, dict(values.get("tokenizer") or {}), "tokenizer"),
        data=_build(DataConfig, dict(values.get("data") or {}), "data"),
        train=_build(TrainConfig, dict(values.get("train") or {}), "train"),
    )


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Set ``section.key=value`` pairs (values parsed as YAML) in a recipe mapping, in place; returns it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ValueError(f"override {item!r} must look like section.key=value (for example train.lr=1e-4)")
        section, name = parts
        values.setdefault(section, {})
        if not isinstance(values[section], dict):
            raise ValueError(f"recipe section {section!r} is not a mapping")
        values[section][name] = yaml.safe_load(raw)
    return values


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """A recipe by file path or by name in ``recipes/`` (``quickstart`` -> recipes/quickstart.yaml)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}: not a file, and not one of {known}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} must be a mapping of sections")
    return recipe_from_dict(apply_overrides(values, list(overrides)))
