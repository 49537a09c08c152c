"""Training recipes: YAML files validated into dataclasses, with ``section.key=value`` overrides.

A recipe has the sections ``model`` (a size preset plus any ``DDLMConfig`` field), ``tokenizer``,
``data`` (``ddlm.data.DataConfig``), ``train`` (``TrainConfig``) and, to start from a trained model instead
of a preset, ``finetune`` (``FinetuneConfig``; the model and tokenizer sections then stay empty). Unknown
keys are errors.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.checks import check_local_path, is_int, is_number, is_text, refuse_invalid
from ..likelihood.bounds import T_IMPORTANCE, T_SAMPLING
from ..models import PRESETS, DDLMConfig
from ..text.corpora import DataConfig

# The built-in recipes: the top-level recipes/ folder, installed as ddlm/builtin_recipes (pyproject.toml
# maps it; ddlm/__init__.py mounts it in a source checkout); found through the import system, so a wheel
# and an editable install agree.
RECIPES_DIR = Path(importlib.import_module("ddlm.builtin_recipes").__path__[0])
OBJECTIVES = ("diffusion", "ar")
SECTIONS = ("model", "tokenizer", "data", "train", "finetune")
DECAYS = ("constant", "linear", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")
FINETUNE_DTYPES = ("float32", "bfloat16", "float16")
LOSS_IMPLS = ("auto", "standard", "inplace", "fused_head")  # how the diffusion loss is computed (the same loss)
DEFAULT_LABEL_DROPOUT = 0.1  # classifier-free guidance's usual rate of training on the null class
MIN_BPE_VOCAB = 257  # a byte-level BPE: 256 bytes and EOS
PLACEHOLDER_VOCAB = 50257  # vocab_size while validating a recipe's model section (the tokenizer sets the real one)
SCALAR_KINDS = {"int": int, "float": float, "str": str, "bool": bool, "bool | None": bool | None}  # DDLMConfig's annotations


def tracker_names() -> tuple[str, ...]:
    """The trackers ``train.trackers`` may name: accelerate's (``accelerate.utils.LoggerType``) and ``none``."""
    from accelerate.utils import LoggerType

    return tuple(t.value for t in LoggerType) + ("none",)



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
        if self.name is not None and self.train_vocab_size is not None:
            raise ValueError("tokenizer: give exactly one of name (hub id or path) and train_vocab_size")
        refuse_invalid("tokenizer", {
            "name": (self.name is None or is_text(self.name), "a non-empty hub id or path"),
            "train_vocab_size": (self.train_vocab_size is None or is_int(self.train_vocab_size, MIN_BPE_VOCAB),
                                 f"an int >= {MIN_BPE_VOCAB}: a byte-level BPE has 256 bytes and EOS"),
        }, self)


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
    t_min: float = 1e-3  # diffusion times lie in [t_min, 1] (uniform unless t_importance is set)
    t_sampling: str = "iid"  # times over the global batch: iid, stratified (one per stratum of [t_min, 1]) or antithetic (u, 1 - u pairs)
    t_importance: str | None = None  # null: t uniform; power: t = t_min + (1 - t_min) u^power, the loss weighted by p(t)/q(t)
    t_importance_power: float = 2.0  # exponent of t_importance='power', finite and >= 1 (1: uniform)
    label_dropout: float | None = None  # class-conditional models: P(a label is replaced by the null class); null: 0.1
    mixed_precision: str = "no"  # bf16 or fp16: autocast through accelerate (trained weights stay float32); no: float32 throughout
    loss_impl: str = "auto"  # the same diffusion loss from: standard, the [tokens x S] log-scores; inplace, its gradient written over them; fused_head, the head fused into the loss (no [tokens x S] tensor); auto, the leanest that applies (ddlm.training.objective.resolved_loss_impl)
    compile: bool = False  # torch.compile the model for the training steps (evaluation and sampling stay eager)
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
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if isinstance(self.trackers, str):
            self.trackers = [self.trackers]
        trackers = tracker_names()
        betas_ok = isinstance(self.betas, tuple) and len(self.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in self.betas)
        trackers_ok = isinstance(self.trackers, list) and all(isinstance(t, str) and t in trackers for t in self.trackers)
        checks = {
            "objective": (self.objective in OBJECTIVES, f"one of {OBJECTIVES}"),
            "decay": (self.decay in DECAYS, f"one of {DECAYS}"),
            "mixed_precision": (self.mixed_precision in MIXED_PRECISION, f"one of {MIXED_PRECISION}"),
            "loss_impl": (self.loss_impl in LOSS_IMPLS, f"one of {LOSS_IMPLS}"),
            "compile": (isinstance(self.compile, bool), "true or false"),
            "lr": (is_number(self.lr) and self.lr > 0, "a finite number > 0"),
            "betas": (betas_ok, "two numbers in [0, 1)"),
            "weight_decay": (is_number(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            "warmup_steps": (is_int(self.warmup_steps, 0), "an int >= 0"),
            "min_lr_ratio": (is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
            "clip_grad_norm": (self.clip_grad_norm is None or (is_number(self.clip_grad_norm) and self.clip_grad_norm > 0),
                               "a finite number > 0, or null for no clipping"),
            "ema": (is_number(self.ema) and 0 <= self.ema < 1, "a number in [0, 1)"),
            "t_min": (is_number(self.t_min) and 0 <= self.t_min < 1, "a number in [0, 1)"),
            "t_sampling": (self.t_sampling in T_SAMPLING, f"one of {T_SAMPLING}"),
            "t_importance": (self.t_importance is None or self.t_importance in T_IMPORTANCE,
                             f"null (uniform times) or one of {T_IMPORTANCE}"),
            "t_importance_power": (is_number(self.t_importance_power) and 1 <= self.t_importance_power < float("inf"),
                                   "a finite number >= 1: u^power has positive density on all of (0, 1] and bounded weights"),
            "label_dropout": (self.label_dropout is None or (is_number(self.label_dropout) and 0 <= self.label_dropout <= 1),
                              "a number in [0, 1], or null for the default"),
            "seed": (is_int(self.seed, 0) and self.seed < 2**63, "an int in [0, 2^63)"),
            "eval_num_t": (is_int(self.eval_num_t, 2) and self.eval_num_t % 2 == 0, "an even int >= 2 (stratified t)"),
            "trackers": (trackers_ok, f"a list of tracker names from {trackers}"),
            "output_dir": (is_text(self.output_dir), "a non-empty path"),
        }
        for name in ("steps", "global_batch_size", "micro_batch_size", "log_every", "eval_every", "eval_blocks",
                     "sample_every", "num_samples", "sample_steps", "save_every", "keep_checkpoints"):
            checks[name] = (is_int(getattr(self, name), 1), "an int >= 1")
        refuse_invalid("train", checks, self)
        if self.t_sampling == "antithetic" and self.global_batch_size % 2:
            raise ValueError(f"train.t_sampling='antithetic' pairs the global batch's sequences (u, 1 - u): "
                             f"train.global_batch_size must be even, got {self.global_batch_size}")
        if self.t_importance is None and self.t_importance_power != 2.0:
            raise ValueError("train.t_importance_power applies with train.t_importance='power'; set that too, or leave the power unset")
        self.accumulation_steps(1)

    @property
    def label_dropout_rate(self) -> float:
        """The probability of replacing a class label by the null class (``label_dropout``, default 0.1)."""
        return DEFAULT_LABEL_DROPOUT if self.label_dropout is None else float(self.label_dropout)

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per process per optimizer step; the global batch must split evenly (the error says what to set)."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"train.global_batch_size {self.global_batch_size} is not divisible by "
                             f"micro_batch_size {self.micro_batch_size} x {world_size} processes; "
                             f"{batch_fix(self.global_batch_size, self.micro_batch_size, world_size)}")
        return self.global_batch_size // per_step


def batch_fix(global_batch: int, micro: int, world: int) -> str:
    """The recipe values that split a global batch over ``world`` processes in micro-batches (for the error)."""
    options = [f"train.global_batch_size={-(-global_batch // (micro * world)) * micro * world}"]
    if global_batch % world == 0:  # the same optimisation: smaller micro-batches, more accumulation steps
        per_process = global_batch // world
        fitting = max(d for d in range(1, micro + 1) if per_process % d == 0)
        options.insert(0, f"train.micro_batch_size={fitting} (the same global batch: {per_process // fitting} "
                          f"accumulation step(s) of {fitting} per process)")
    return "set " + " or ".join(options)


@dataclass
class FinetuneConfig:
    """Start from a trained model instead of a preset (``ddlm.training.finetune``).

    init_from: a model directory or hub id that ``ddlm.load_model`` reads (any family), or with ``adapt`` a causal LM:
    ddlm's own AR baseline or a transformers GPT-2 / Llama / Qwen2 model, turned into an absorbing diffusion model
    (``ddlm.training.adapt``). shift_logits (adapt): token i is predicted at position i - 1, so the AR head is reused
    unchanged (Dream). anneal_steps (adapt): the attention goes from causal to bidirectional over this many optimizer
    steps (DiffuLLaMA), 0 for bidirectional from the start. lora_rank > 0 trains LoRA adapters of that rank (``peft``,
    ``pip install 'ddlm[peft]'``) on lora_target_modules (null: the attention and MLP projections) instead of every
    weight; the export merges them, and the adapter is saved beside it. dtype: the weights the run holds, whatever
    init_from was saved in: float32 (AdamW updates full-precision weights; train.mixed_precision: bf16 still computes
    in bf16), or with LoRA bfloat16 / float16 for the frozen base (half the memory; the adapters stay float32, and the
    export merges and writes float32). A 16-bit weight rounds away any update below half its spacing, so full
    fine-tuning is float32.
    """

    init_from: str | None = None  # the model to start from (directory or hub id); null: train from the model section's preset
    adapt: bool = False  # init_from is a causal LM (ddlm AR, GPT-2, Llama, Qwen2): make it an absorbing diffusion model
    shift_logits: bool = True  # adapt: token i is predicted at position i - 1, reusing the AR head (Dream)
    anneal_steps: int = 0  # adapt: attention from causal to bidirectional over this many steps (DiffuLLaMA); 0: bidirectional
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank instead of every weight (pip install 'ddlm[peft]')
    lora_alpha: float = 16.0  # LoRA scale: the update is (alpha / rank) B A
    lora_dropout: float = 0.0  # dropout on the adapters' input
    lora_target_modules: list[str] | None = None  # module names to adapt; null: the family's attention and MLP projections
    dtype: str = "float32"  # the weights during the run: float32, or with LoRA bfloat16 / float16 for the frozen base

    def __post_init__(self):
        targets_ok = self.lora_target_modules is None or (isinstance(self.lora_target_modules, list) and self.lora_target_modules
                                                          and all(is_text(t) for t in self.lora_target_modules))
        refuse_invalid("finetune", {
            "init_from": (self.init_from is None or is_text(self.init_from), "null or a model directory / hub id"),
            "adapt": (isinstance(self.adapt, bool), "true or false"),
            "shift_logits": (isinstance(self.shift_logits, bool), "true or false"),
            "anneal_steps": (is_int(self.anneal_steps, 0), "an int >= 0"),
            "lora_rank": (is_int(self.lora_rank, 0), "an int >= 0 (0: train every weight)"),
            "lora_alpha": (is_number(self.lora_alpha) and self.lora_alpha > 0, "a finite number > 0"),
            "lora_dropout": (is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1, "a number in [0, 1)"),
            "lora_target_modules": (targets_ok, "null or a non-empty list of module names"),
            "dtype": (self.dtype in FINETUNE_DTYPES, f"one of {FINETUNE_DTYPES}"),
        }, self)
        if self.adapt and self.init_from is None:
            raise ValueError("finetune.adapt turns the causal LM finetune.init_from into a diffusion model: set finetune.init_from")
        if not self.adapt and (self.anneal_steps or not self.shift_logits):
            raise ValueError("finetune.anneal_steps and finetune.shift_logits apply when adapting a causal LM (finetune.adapt=true)")
        lora_set = self.lora_alpha != 16.0 or self.lora_dropout or self.lora_target_modules is not None
        if not self.lora_rank and lora_set:
            raise ValueError("finetune.lora_alpha, lora_dropout and lora_target_modules apply to LoRA: set finetune.lora_rank > 0")
        if self.dtype != "float32" and not self.lora_rank:
            raise ValueError(f"finetune.dtype={self.dtype} would train 16-bit weights, whose rounding loses AdamW's small "
                             "updates: keep float32 (train.mixed_precision=bf16 computes in bf16) or set finetune.lora_rank > 0 "
                             "to freeze the base in that dtype")
        if self.lora_rank and self.init_from is None:
            raise ValueError("finetune.lora_rank adapts a trained model: set finetune.init_from")
        if self.lora_rank and importlib.util.find_spec("peft") is None:
            raise ValueError("finetune.lora_rank needs the peft package: pip install 'ddlm[peft]'")

    @property
    def active(self) -> bool:
        """Whether the run starts from a trained model."""
        return self.init_from is not None


@dataclass
class Recipe:
    model: ModelRecipe
    tokenizer: TokenizerRecipe
    data: DataConfig
    train: TrainConfig
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        model = {"preset": self.model.preset, **self.model.overrides}
        return {"model": model, "tokenizer": dataclasses.asdict(self.tokenizer), "data": dataclasses.asdict(self.data),
                "train": {**dataclasses.asdict(self.train), "betas": list(self.train.betas)},
                "finetune": dataclasses.asdict(self.finetune)}


def _coerce(section: str, name: str, value, kind):
    """Check a value against its field's type; numbers YAML reads as strings ("1e-4") become floats.

    Only plain scalar types (and their unions with None) are checked; containers pass as given (their
    dataclass checks them). None (an empty YAML value) is refused unless the field allows it.
    """
    options = set(typing.get_args(kind)) if isinstance(kind, types.UnionType) else {kind}
    if value is None:
        if type(None) not in options:
            raise ValueError(f"{section}.{name} needs a value (got none: write {section}.{name}=VALUE)")
        return value
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
    if unknown := sorted(set(values) - names, key=str):
        raise ValueError(f"unknown {section} keys {unknown}; valid keys: {sorted(names)}")
    return cls(**{name: _coerce(section, name, value, fields[name]) for name, value in values.items()})


def _section(values: dict, name: str) -> dict:
    """A recipe section as a dict (absent or empty: {}); a ValueError if it is not a mapping."""
    section = values.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"recipe section {name!r} must be a mapping of keys to values, got {section!r}")
    return dict(section)


def recipe_from_dict(values: dict) -> Recipe:
    """Validate a recipe mapping (as read from YAML): every value's kind and range, and the sections against each
    other (the model section by building its ``DDLMConfig``), and that the local files it names exist, before anything
    is tokenised, trained or written."""
    if not isinstance(values, dict):
        raise ValueError(f"a recipe must be a mapping of sections, got {type(values).__name__}")
    if unknown := sorted(set(values) - set(SECTIONS), key=str):
        raise ValueError(f"unknown recipe sections {unknown}; valid: {sorted(SECTIONS)}")
    sections = {name: _section(values, name) for name in SECTIONS}
    finetune = _build(FinetuneConfig, sections["finetune"], "finetune")
    if finetune.active:
        return _finetune_recipe(sections, finetune)
    model = sections["model"]
    preset = model.pop("preset", "tiny")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    kinds = {name: SCALAR_KINDS.get(str(kind), object) for name, kind in DDLMConfig.__annotations__.items()}  # object: unchecked here
    config_fields = set(kinds) - {"vocab_size"}
    if unknown := sorted(set(model) - config_fields, key=str):
        raise ValueError(f"unknown model keys {unknown}; valid keys: preset and the DDLMConfig fields {sorted(config_fields)}")
    model = {name: _coerce("model", name, value, kinds[name]) for name, value in model.items()}
    recipe = Recipe(
        model=ModelRecipe(preset, model),
        tokenizer=_build(TokenizerRecipe, sections["tokenizer"], "tokenizer"),
        data=_build(DataConfig, sections["data"], "data"),
        train=_build(TrainConfig, sections["train"], "train"),
    )
    if recipe.tokenizer.name is None and recipe.tokenizer.train_vocab_size is None:
        raise ValueError("tokenizer: give exactly one of name (hub id or path) and train_vocab_size")
    try:
        config = recipe.model.config(recipe.tokenizer.train_vocab_size or PLACEHOLDER_VOCAB, recipe.data.block_size, recipe.train.objective)
    except ValueError as error:
        raise ValueError(f"recipe model section: {error}") from None
    _check_labels(config.num_classes, recipe.data.labels, recipe.train.label_dropout)
    _check_sft(recipe)
    _check_loss_impl(recipe.train, config)
    if recipe.train.objective == "ar" and (recipe.train.t_sampling != "iid" or recipe.train.t_importance is not None):
        raise ValueError("train.t_sampling and train.t_importance apply to the diffusion loss; an autoregressive model "
                         "(train.objective='ar') has no diffusion times: leave them at iid and null")
    if recipe.tokenizer.name is not None:  # local paths must exist; hub ids and datasets are looked up when used
        check_local_path("tokenizer", recipe.tokenizer.name)
    recipe.data.check_local_files()
    return recipe


def _finetune_recipe(sections: dict, finetune: FinetuneConfig) -> Recipe:
    """A recipe that starts from ``finetune.init_from``: the model and its tokenizer come from there, so the model and
    tokenizer sections stay empty; the objective is the diffusion loss."""
    for name in ("model", "tokenizer"):
        if sections[name]:
            raise ValueError(f"recipe section {name!r}: the {name} comes from finetune.init_from ({finetune.init_from}); "
                             f"leave the {name} section out")
    recipe = Recipe(ModelRecipe(), TokenizerRecipe(), _build(DataConfig, sections["data"], "data"),
                    _build(TrainConfig, sections["train"], "train"), finetune)
    train = recipe.train
    if train.objective != "diffusion":
        raise ValueError("train.objective: fine-tuning (finetune.init_from) trains with the diffusion loss; leave it 'diffusion'")
    _check_sft(recipe)
    if train.label_dropout is not None:
        raise ValueError("train.label_dropout applies to class-conditional models trained from a preset; leave it unset")
    check_local_path("finetune.init_from", finetune.init_from)
    recipe.data.check_local_files()
    return recipe


def _check_sft(recipe: Recipe) -> None:
    """SFT examples (data.format='sft') train a diffusion model with the standard loss implementation."""
    if recipe.data.format != "sft":
        return
    if recipe.train.objective != "diffusion":
        raise ValueError("data.format='sft' trains a diffusion model on responses given prompts; train.objective must be 'diffusion'")
    if recipe.train.loss_impl not in ("auto", "standard"):
        raise ValueError(f"train.loss_impl={recipe.train.loss_impl!r}: the SFT loss scores the response positions only, "
                         "through the standard implementation; use train.loss_impl='standard' (or leave it 'auto')")


def _check_loss_impl(train: TrainConfig, config: DDLMConfig) -> None:
    """The loss implementations other than ``standard`` need a diffusion model; the fused head a time-conditioned one."""
    if train.loss_impl in ("standard", "auto"):
        return
    if train.objective == "ar":
        raise ValueError(f"train.loss_impl={train.loss_impl!r} applies to the diffusion loss; an autoregressive model "
                         "(train.objective='ar') trains with cross-entropy: use train.loss_impl='standard'")
    if train.loss_impl == "fused_head" and not config.time_conditioning:
        raise ValueError("train.loss_impl='fused_head' needs a time-conditioned model: a time-independent one "
                         "(model.time_conditioning=false) normalises its head's output with a softmax over the "
                         "vocabulary first; use train.loss_impl='inplace' (no extra [tokens x S] memory either)")


def _check_labels(num_classes: int, labels: list[int] | None, label_dropout: float | None) -> None:
    """ValueError unless the model's classes, the data's labels and the label dropout agree."""
    if num_classes and labels is None:
        raise ValueError(f"model.num_classes={num_classes} needs labelled data: give data.sources as a list of "
                         "{source: PATH, label: CLASS} entries")
    if labels is not None and not num_classes:
        raise ValueError(f"data.sources carry labels {sorted(set(labels))} but the model is unconditional: set model.num_classes "
                         f"(at least {max(labels) + 1}), or drop the labels to train on the sources unconditionally")
    for i, label in enumerate(labels or ()):
        if label >= num_classes:
            raise ValueError(f"data.sources[{i}].label={label} is out of range for model.num_classes={num_classes} "
                             f"(labels 0..{num_classes - 1}; {num_classes} is the null class)")
    if label_dropout is not None and not num_classes:
        raise ValueError("train.label_dropout applies to class-conditional models (model.num_classes > 0); leave it unset")


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any depth) instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with << may be overridden: that is what merging is for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the base constructor refuses it
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def safe_yaml(text: str):
    """The YAML document ``text`` read with ``RecipeLoader`` (safe tags only, duplicate keys refused)."""
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
        try:
            values[section][name] = safe_yaml(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(error)})") from None
    return values


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """A recipe by file path or by name in ``recipes/`` (``quickstart`` -> recipes/quickstart.yaml)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}: not a file, and not one of {known}")
    try:
        values = safe_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f"recipe {path} is not UTF-8 text ({error})") from None
    except yaml.YAMLError as error:  # syntax errors, duplicate keys, and tags such as !!python/object that SafeLoader refuses
        raise ValueError(f"recipe {path} is not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} must be a mapping of sections")
    return recipe_from_dict(apply_overrides(values, list(overrides)))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: its problem and the line (1-based) it was found on."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem
