"""The training loop: one loop for CPU, DDP, FSDP and DeepSpeed as ``accelerate`` configures them.

``ddlm train RECIPE`` (or ``accelerate launch -m ddlm train RECIPE``) runs ``train(recipe)``:
AdamW with warm-up and decay, gradient accumulation and clipping, mixed precision, EMA weights,
periodic likelihood-bound evaluation and samples, trackers and a tqdm bar with tokens/s. A
class-conditional model (``model.num_classes``) trains on labelled blocks (``data.sources``), each
label replaced by the null class with probability ``train.label_dropout`` at every step.
Checkpoints (model, optimizer, scheduler, EMA and gradient-scaler states as safetensors + JSON; the
data position and every random draw are functions of the step) are written by ``ddlm.checkpoints``:
a locked run directory, whole-or-nothing checkpoints with a verified manifest, no pickle anywhere.
``resume=True`` continues exactly from the newest intact checkpoint, refusing recipe changes that
would make another run.

A run goes in phases: ``set_up`` (run directory, resume point, tokenizer, data, the prepared model,
optimizer, scheduler and EMA, held in a ``TrainingRun``), then for each step ``train_step`` (one
optimizer step) and ``after_step`` (tokens/s, evaluation and samples, metrics, checkpoint), then
``finish`` (export and report). What a step computes is in ``objective``, what a run carries into its
checkpoints in ``state``, what it shows in ``reports``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.manifest import write_atomic, write_model_manifest
from ..core.score import NonFiniteScoreError
from ..models import DDLMConfig, DDLMForDiffusion
from ..text.corpora import DataConfig, build_datasets, eos_id, load_documents
from ..text.loading import loading_progress
from .adapt import annealed_attention_mask
from .checkpoints import latest_checkpoint, load_checkpoint, prepare_run_directory, recipe_changes, run_lock, save_checkpoint, whole
from .finetune import check_drawable, start_model
from .objective import (annealing_generator, compile_failure, compile_for_training, drop_labels, micro_batch_uniforms, objective_loss,
                        resolved_loss_impl, step_generator)
from .recipes import FinetuneConfig, Recipe, TokenizerRecipe, TrainConfig
from .reports import eval_line, evaluate, generate_samples, report, set_aside_later_metrics, showcase, write_samples
from .state import EMA, load_training_state, lr_lambda, model_fields, training_state

FINAL = "final"
ADAPTER = "adapter"  # LoRA adapters of a fine-tuning run (finetune.lora_rank), beside the merged final model
TOKENIZER = "tokenizer"
METRICS = "metrics.jsonl"
RESUMES = "resumes.jsonl"
SECTION_CLASSES = {"tokenizer": TokenizerRecipe, "data": DataConfig, "train": TrainConfig, "finetune": FinetuneConfig}


def field_defaults(cls) -> dict:
    """The plain defaults of a dataclass's fields (those with a ``default``), by name."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def load_tokenizer(recipe: Recipe, output_dir: Path, accelerator):
    """The recipe's tokenizer; a trained BPE is trained once (main process) and saved in the run directory."""
    from ..evaluation.scoring import load_tokenizer as load_saved

    if recipe.tokenizer.name is not None:
        return load_saved(recipe.tokenizer.name)
    saved = output_dir / TOKENIZER
    if accelerator.is_main_process and not saved.is_dir():
        from ..text.tokenization import train_byte_bpe

        tokenizer = train_byte_bpe(load_documents(recipe.data, "train"), recipe.tokenizer.train_vocab_size)
        partial = saved.with_name(f".{TOKENIZER}.tmp")  # renamed once whole: a kill never leaves half a tokenizer
        shutil.rmtree(partial, ignore_errors=True)
        tokenizer.save_pretrained(partial)
        os.replace(partial, saved)
    accelerator.wait_for_everyone()
    return load_saved(saved)


def check_world_size(num_processes: int, environ=os.environ) -> None:
    """Refuse a run that a launcher asked to start on several processes but that runs as ``num_processes``.

    ``accelerate launch --num_processes N --cpu`` (or without ``--multi_gpu`` where there is no GPU) starts
    one process: accelerate's single-process launcher, which sets MASTER_ADDR for the N it was asked for but
    no WORLD_SIZE. torchrun-style launchers set WORLD_SIZE."""
    fix = ("on CPUs launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...` "
           "(accelerate's --cpu flag starts one process); on GPUs pass --multi_gpu")
    requested = environ.get("WORLD_SIZE")
    if requested is not None and requested.isdigit() and int(requested) != num_processes:
        raise ValueError(f"the launcher asked for {requested} processes (WORLD_SIZE) but this run has {num_processes}; {fix}")
    launched = "ACCELERATE_MIXED_PRECISION" in environ or "ACCELERATE_DYNAMO_BACKEND" in environ
    if requested is None and launched and "MASTER_ADDR" in environ and num_processes == 1:
        raise ValueError(f"accelerate launch was asked for several processes (it set MASTER_ADDR) but started this one "
                         f"alone; {fix}; for one process, launch without --num_processes (or unset MASTER_ADDR)")


def check_sharding(accelerator, ema: bool) -> None:
    """Refuse the distributed set-ups whose parameters the EMA cannot average elementwise."""
    from accelerate.utils import DistributedType

    if not ema:
        return
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ValueError("EMA weights under FSDP need FSDP2 (fsdp_version: 2 in the accelerate config), "
                         "whose parameters are DTensors; or set train.ema=0")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.deepspeed_config["zero_optimization"].get("stage", 0) == 3:
        raise ValueError("EMA weights are not supported under DeepSpeed ZeRO-3 (partitioned parameters); "
                         "use ZeRO-1/2 or FSDP2, or set train.ema=0")


def train(recipe: Recipe, *, resume: bool = False, progress: bool = True, allow_changes=()) -> Path:
    """Train per the recipe; returns the exported ``final`` directory (model with EMA weights + tokenizer),
    which the main process also prints. Refuses a launch that started fewer processes than it asked for.

    The run directory ``train.output_dir`` is locked for the whole run (a second run into it fails at
    once). resume: continue from its newest intact checkpoint. allow_changes: the recipe keys
    (``"train.steps"``, ...) that may differ from the checkpoint's recipe on resume — the CLI passes
    the overrides on its command line; ``ddlm.checkpoints.RESUMABLE_CHANGES`` lists which can.
    """
    from accelerate import Accelerator

    train_cfg = recipe.train
    output_dir = Path(train_cfg.output_dir)
    trackers = [t for t in train_cfg.trackers if t != "none"]
    accelerator = Accelerator(mixed_precision=train_cfg.mixed_precision, log_with=trackers or None,
                              project_dir=str(output_dir))
    check_world_size(accelerator.num_processes)
    try:
        with run_lock(output_dir) if accelerator.is_main_process else contextlib.nullcontext():
            return _train(recipe, accelerator, resume, progress, set(allow_changes), trackers)
    finally:
        release_settings(accelerator)


def release_settings(accelerator) -> None:
    """Forget accelerate's process-wide settings after a run in one unlaunched process, so that the next ``train`` in
    this process (a notebook, a test) can use another train.mixed_precision instead of failing on accelerate's
    "AcceleratorState has already been initialized". A launched process runs one recipe and keeps them."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.NO:
        AcceleratorState._reset_state()  # accelerate's own way (its tests call it); the process state is kept


def resume_state(checkpoint: Path | None, steps: int) -> tuple[dict | None, dict | None]:
    """(state, meta) of the checkpoint to resume from, or (None, None) without one; a checkpoint beyond the
    run's ``steps`` is refused (the loop would export it as a model of ``steps`` steps)."""
    if checkpoint is None:
        return None, None
    saved, meta = load_checkpoint(checkpoint)
    if meta["step"] > steps:
        raise ValueError(f"cannot resume: {checkpoint.name} is at step {meta['step']}, beyond train.steps={steps}; "
                         f"pass train.steps=N with N >= {meta['step']} to train on, or start a new run in another train.output_dir")
    return saved, meta


@dataclasses.dataclass
class TrainingRun:
    """What the phases of one run share, built by ``set_up``: the recipe and accelerator, the data, the
    prepared model / optimizer / scheduler and EMA, the step it starts after and the tokens seen so far.

    model is the prepared (wrapped) model, for backward, gradient sync, clipping and export; base the
    unwrapped module, for checkpoints, the EMA, evaluation and sampling (uncompiled key names);
    step_model what the training steps call (``torch.compile``d under train.compile, whose errors are
    compile_errors; () without it)."""

    recipe: Recipe
    accelerator: object
    tokenizer: object
    config: DDLMConfig
    train_blocks: object
    validation: object
    model: object
    base: DDLMForDiffusion
    step_model: object
    compile_errors: tuple
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    start: int
    tokens: int
    context: int | None  # an AR model's context token for evaluation (EOS), else None
    loss_impl: str  # the loss implementation the steps use (``resolved_loss_impl``)

    @property
    def train(self) -> TrainConfig:
        return self.recipe.train

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / METRICS

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def accumulation(self) -> int:
        return self.train.accumulation_steps(self.accelerator.num_processes)

    @property
    def tokens_per_step(self) -> int:
        return self.train.global_batch_size * self.recipe.data.block_size


def due(step: int, every: int, steps: int) -> bool:
    """Whether a periodic action (every ``every`` steps, and at the last one) falls on ``step``."""
    return step % every == 0 or step == steps


def ema_weights(ema: EMA | None):
    """A context with the EMA weights loaded into the model (none to load without an EMA)."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


def append_metrics(run: TrainingRun, record: dict) -> None:
    """Append a record to ``metrics.jsonl`` (main process only)."""
    if run.accelerator.is_main_process:
        with run.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _train(recipe: Recipe, accelerator, resume: bool, progress: bool, allow_changes: set[str], trackers: list[str]) -> Path:
    """The run in phases: ``set_up``, then per step ``train_step`` and ``after_step`` (throughput, evaluation
    and samples, metrics, checkpoint), then ``finish`` (export and report)."""
    run = set_up(recipe, accelerator, resume, progress, allow_changes, trackers)
    train_cfg = recipe.train
    if run.start == 0:  # the held-out numbers of the untrained (or not yet fine-tuned) model, for comparison
        untrained = evaluate(run.base, recipe, run.validation, accelerator, run.context)
        if accelerator.is_main_process:
            tqdm.write(eval_line(0, untrained) + (" (before fine-tuning)" if recipe.finetune.active else " (untrained)"))
        append_metrics(run, {"step": 0, **untrained})
    bar = tqdm(total=train_cfg.steps, initial=run.start, desc="training", disable=not (progress and accelerator.is_main_process))
    batches = run.train_blocks.batches(run.start, train_cfg.global_batch_size, accelerator.process_index,
                                       accelerator.num_processes, train_cfg.seed, with_labels=run.conditional)
    throughput = Throughput(run.tokens)
    for step in range(run.start + 1, train_cfg.steps + 1):
        record = train_step(run, step, next(batches))
        bar.update(1)
        after_step(run, record, bar, throughput)
    bar.close()
    return finish(run, progress)


def set_up(recipe: Recipe, accelerator, resume: bool, progress: bool, allow_changes: set[str], trackers: list[str]) -> TrainingRun:
    """Everything before the first step: the run directory and the checkpoint to resume from (its recipe
    changes checked and recorded), the tokenizer, the data, the prepared model, optimizer, scheduler and
    EMA with the checkpoint's state loaded, and the trackers."""
    train_cfg = recipe.train
    output_dir = Path(train_cfg.output_dir)
    train_cfg.accumulation_steps(accelerator.num_processes)  # refuse a global batch that does not split, first
    checkpoint, saved, meta = resume_point(output_dir, accelerator, resume, train_cfg.steps)
    initial, tokenizer = start_model(recipe.finetune, progress=progress) if recipe.finetune.active else (None, None)
    if initial is None:
        tokenizer = load_tokenizer(recipe, output_dir, accelerator)
        config = recipe.model.config(len(tokenizer), recipe.data.block_size, train_cfg.objective)
    else:
        config = initial.config
        check_block_size(recipe, config)
        add_adapters(initial, recipe.finetune, train_cfg.seed)
    changes = {} if meta is None else resume_changes(recipe, config, meta, allow_changes)
    with accelerator.main_process_first():
        train_blocks, validation = load_data(recipe, tokenizer, progress and accelerator.is_main_process)
    if meta is not None:
        check_data_format(meta, train_blocks)
    if initial is not None:
        for blocks in (train_blocks, validation):
            check_drawable(initial, blocks, tokenizer)
    if accelerator.is_main_process:
        record_start(recipe, output_dir, checkpoint, meta, changes)
    model, optimizer, scheduler = prepare_model(recipe, config, accelerator, initial)
    base = accelerator.unwrap_model(model)  # under FSDP2 the same module, its parameters sharded
    check_sharding(accelerator, train_cfg.ema > 0)
    ema = EMA(trainable(base), train_cfg.ema) if train_cfg.ema > 0 else None
    loss_impl = resolved_loss_impl(train_cfg, config, recipe.data.format == "sft", accelerator.distributed_type.value)
    if meta is not None and train_cfg.loss_impl == "auto":  # continue with what the checkpoint's steps used
        loss_impl = checkpoint_loss_impl(meta) or loss_impl
    if loss_impl == "fused_head" and accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise ValueError(f"train.loss_impl='fused_head' reads the output head's weight outside the model's forward, "
                         f"which {accelerator.distributed_type.value} shards; use train.loss_impl='inplace'")
    step_model, compile_errors = model, ()
    if train_cfg.compile:
        from torch._dynamo.exc import TorchDynamoException

        step_model, compile_errors = compile_for_training(model, accelerator.device), (TorchDynamoException,)
    start, tokens = 0, 0
    if saved is not None:
        load_training_state(saved, base, optimizer, scheduler, ema, accelerator.scaler, train_cfg)
        start, tokens = meta["step"], meta["tokens"]
    if trackers:
        accelerator.init_trackers(output_dir.name, config={k: str(v) for k, v in recipe.to_dict()["train"].items()})
    context = eos_id(tokenizer) if train_cfg.objective == "ar" else None
    return TrainingRun(recipe, accelerator, tokenizer, config, train_blocks, validation, model, base, step_model,
                       compile_errors, optimizer, scheduler, ema, start, tokens, context, loss_impl)


def checkpoint_loss_impl(meta: dict) -> str | None:
    """The loss implementation a checkpoint's steps used: recorded in its meta, or its recipe's explicit value (runs
    from before ``auto`` existed: ``standard`` then was the default); None if neither says."""
    saved = meta.get("loss_impl") or meta["recipe"].get("train", {}).get("loss_impl")
    return saved if saved != "auto" else None


def check_block_size(recipe: Recipe, config) -> None:
    """ValueError unless data.block_size fits the model finetune.init_from names."""
    longest = config.max_position_embeddings
    if recipe.data.block_size > longest:
        raise ValueError(f"data.block_size {recipe.data.block_size} exceeds what the model finetune.init_from reads "
                         f"({longest} positions)")


def load_data(recipe: Recipe, tokenizer, progress: bool) -> tuple:
    """(train, validation) blocks of the recipe's data: packed text, or SFT examples (``data.format: sft``)."""
    if recipe.data.format == "sft":
        from ..text.instructions import build_response_blocks

        return build_response_blocks(recipe.data, tokenizer, seed=recipe.train.seed)
    return build_datasets(recipe.data, tokenizer, seed=recipe.train.seed, progress=progress)


def check_data_format(meta: dict, train_blocks) -> None:
    """On a resume: ValueError if the SFT examples are rendered differently from the checkpoint's run (row layout or
    chat template), which would make it another run."""
    now, saved = getattr(train_blocks, "signature", None), meta.get("data_format")
    if now != saved:
        raise ValueError(f"cannot resume: the training examples' format changed (data.source rows and chat template: "
                         f"checkpoint {saved}, now {now}); start a new run in another train.output_dir")


def add_adapters(model, finetune, seed: int) -> None:
    """Add LoRA adapters to the model a fine-tuning run starts from, in place (finetune.lora_rank > 0), their random
    initialisation drawn after seeding torch with ``seed`` (a run's result must not depend on what ran before it)."""
    if finetune.lora_rank:
        from .lora import add_lora

        torch.manual_seed(seed)
        add_lora(model, rank=finetune.lora_rank, alpha=finetune.lora_alpha, dropout=finetune.lora_dropout,
                 target_modules=finetune.lora_target_modules)


def trainable(model) -> list:
    """The parameters the optimizer and the EMA update: all of them, or the LoRA adapters' (finetune.lora_rank)."""
    return [p for p in model.parameters() if p.requires_grad]


def resume_point(output_dir: Path, accelerator, resume: bool, steps: int) -> tuple[Path | None, dict | None, dict | None]:
    """(checkpoint, state, meta) to resume from, all None for a new run, after the main process has
    prepared the run directory (``prepare_run_directory``: a new run refuses a used one)."""
    if accelerator.is_main_process:
        prepare_run_directory(output_dir, resume)
    accelerator.wait_for_everyone()
    checkpoint = latest_checkpoint(output_dir) if resume else None  # the main process verified it, or moved it aside
    saved, meta = resume_state(checkpoint, steps)
    return checkpoint, saved, meta


def resume_changes(recipe: Recipe, config: DDLMConfig, meta: dict, allow_changes: set[str]) -> dict:
    """The recipe keys that differ from the checkpoint's recipe (``recipe_changes`` refuses those not in
    allow_changes or not resumable)."""
    comparable = lambda recipe_dict, model: json.loads(json.dumps({**recipe_dict, "model": model}))  # noqa: E731
    # a field the checkpoint does not record did not exist when it was written: it had its default (time_conditioning)
    saved_model = meta["model"] if "family" in meta["model"] else {**field_defaults(DDLMConfig), **meta["model"]}
    # likewise a recipe key or section it lacks (train.loss_impl, the finetune section, finetune.dtype)
    saved = {**meta["recipe"], **{name: {**field_defaults(cls), **meta["recipe"].get(name, {})} for name, cls in SECTION_CLASSES.items()}}
    current = recipe.to_dict()
    if current["train"]["loss_impl"] == "auto":  # auto on a resume: the implementation the checkpoint's steps used
        current["train"]["loss_impl"] = saved["train"]["loss_impl"]
    return recipe_changes(comparable(saved, saved_model), comparable(current, model_fields(config)), allow_changes)


def record_start(recipe: Recipe, output_dir: Path, checkpoint: Path | None, meta: dict | None, changes: dict) -> None:
    """Write the run's ``recipe.json``; on a resume, set aside the metrics of later steps and append the
    checkpoint and the recipe changes to ``resumes.jsonl`` (main process)."""
    write_atomic(output_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    if meta is not None:
        set_aside_later_metrics(output_dir / METRICS, meta["step"])
        with (output_dir / RESUMES).open("a") as f:
            f.write(json.dumps({"step": meta["step"], "checkpoint": checkpoint.name, "changes": changes}) + "\n")


def prepare_model(recipe: Recipe, config: DDLMConfig, accelerator, initial=None) -> tuple:
    """(model, optimizer, scheduler): the model initialised from train.seed (or ``initial``, the model fine-tuning
    starts from), AdamW on its trainable parameters and the learning-rate schedule, model and optimizer prepared by
    accelerate."""
    train_cfg = recipe.train
    torch.manual_seed(train_cfg.seed)
    model = DDLMForDiffusion(config) if initial is None else initial
    model.train()
    optimizer = torch.optim.AdamW(trainable(model), lr=train_cfg.lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay)
    # Stepped by the loop once per optimizer step (accelerate's prepared scheduler steps once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train_cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler


def train_step(run: TrainingRun, step: int, batch) -> dict:
    """One optimizer step on this process's part of the global batch (blocks, (blocks, labels) for a
    class-conditional model, (blocks, prompt masks) for SFT examples): the micro-batches' losses and gradients,
    a stop before the update on a non-finite loss, the update; returns the step's record for ``metrics.jsonl``."""
    accelerator = run.accelerator
    local, extra = batch if isinstance(batch, (tuple, list)) else (batch, None)
    local = local.to(accelerator.device)
    generator = step_generator(run.train.seed, step, accelerator.process_index, accelerator.device)
    attention = annealed_attention_mask(local.shape[1], step, run.recipe.finetune.anneal_steps,
                                        annealing_generator(run.train.seed, step, accelerator.device))
    labels, prompts = (extra, None) if run.conditional else (None, extra)
    loss_sum = accumulate_gradients(run, generator, micro_batches(run, step, local, labels, prompts, generator), attention)
    loss_mean = accelerator.reduce(loss_sum / run.accumulation, reduction="mean").item()
    sequences = int(accelerator.reduce(torch.tensor(local.shape[0], device=accelerator.device), reduction="sum"))
    if not math.isfinite(loss_mean):
        last = latest_checkpoint(run.output_dir)
        raise FloatingPointError(f"the training loss is {loss_mean} at step {step}; stopped before updating the weights. "
                                 f"The last good checkpoint is {last if last else 'none (no checkpoint was written yet)'}")
    grad_norm = optimizer_step(run)
    run.tokens += run.tokens_per_step
    record = {"step": step, "train/loss": loss_mean, "lr": run.scheduler.get_last_lr()[0], "tokens": run.tokens, "sequences": sequences}
    if grad_norm is not None:
        record["train/grad_norm"] = grad_norm
    return record


def micro_batches(run: TrainingRun, step: int, local: torch.Tensor, labels: torch.Tensor | None, prompts: torch.Tensor | None,
                  generator) -> zip:
    """The step's micro-batches as (blocks, labels after dropout or None, prompt masks or None, time uniforms or None)."""
    train_cfg, device, accumulation = run.train, run.accelerator.device, run.accumulation
    if run.conditional:  # the dropout coins come first from the step's generator: a function of (seed, step, rank)
        labels = drop_labels(labels.to(device), train_cfg.label_dropout_rate, run.config.null_class, generator)
    micro_labels = labels.split(train_cfg.micro_batch_size) if run.conditional else [None] * accumulation
    micro_prompts = prompts.to(device).split(train_cfg.micro_batch_size) if prompts is not None else [None] * accumulation
    uniforms = micro_batch_uniforms(train_cfg, step, run.accelerator.process_index, run.accelerator.num_processes, device)
    return zip(local.split(train_cfg.micro_batch_size), micro_labels, micro_prompts, uniforms or [None] * accumulation)


def accumulate_gradients(run: TrainingRun, generator, batches, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and backward over the micro-batches, the gradients synchronised at the last one; the sum of
    their losses (Float64), NaN if the network's scores diverged (the remaining micro-batches are skipped).
    attention_mask: the step's attention pattern while finetune.anneal_steps anneals it, else None."""
    accelerator, base = run.accelerator, run.base
    loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    for i, (micro, micro_label, micro_prompt, uniforms) in enumerate(batches):
        sync = contextlib.nullcontext() if i == run.accumulation - 1 else accelerator.no_sync(run.model)
        with sync:
            try:
                with accelerator.autocast():
                    loss = objective_loss(run.step_model, micro, run.train, base.graph, base.noise, generator, micro_label,
                                          head=base, uniforms=uniforms, prompt_mask=micro_prompt, attention_mask=attention_mask,
                                          loss_impl=run.loss_impl)
            except NonFiniteScoreError:  # the network itself diverged: the step stops, naming the step
                loss_sum += math.nan
                break
            except run.compile_errors as error:  # () without train.compile: torch._dynamo is not imported
                raise compile_failure(error) from error
            accelerator.backward(loss / run.accumulation)
        loss_sum += loss.detach().double()
    return loss_sum


def optimizer_step(run: TrainingRun) -> float | None:
    """Clip the gradients (train.clip_grad_norm), step the optimizer and the schedule, clear the gradients,
    update the EMA; the gradient norm before clipping, None without clipping."""
    grad_norm = None
    if run.train.clip_grad_norm is not None:
        grad_norm = float(run.accelerator.clip_grad_norm_(run.model.parameters(), run.train.clip_grad_norm))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update()
    return grad_norm


class Throughput:
    """Training tokens per second between two readings."""

    def __init__(self, tokens: int):
        self.clock, self.tokens = time.perf_counter(), tokens

    def read(self, tokens: int) -> float:
        """Tokens per second since the last reading (or the start); ``tokens`` is the run's count so far."""
        rate = (tokens - self.tokens) / (time.perf_counter() - self.clock)
        self.clock, self.tokens = time.perf_counter(), tokens
        return rate


def after_step(run: TrainingRun, record: dict, bar, throughput: Throughput) -> None:
    """The rest of a step, each when due: tokens/s (train.log_every), evaluation and samples, the record
    to the trackers and ``metrics.jsonl``, a checkpoint (train.save_every)."""
    train_cfg, step = run.train, record["step"]
    if due(step, train_cfg.log_every, train_cfg.steps):
        record["tokens_per_s"] = throughput.read(run.tokens)
        bar.set_postfix(loss=f"{record['train/loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
    evaluate_and_sample(run, record, bar)
    run.accelerator.log(record, step=step)
    append_metrics(run, record)
    if due(step, train_cfg.save_every, train_cfg.steps):
        meta = {"step": step, "tokens": run.tokens, "recipe": run.recipe.to_dict(), "model": model_fields(run.config),
                "data_format": getattr(run.train_blocks, "signature", None), "loss_impl": run.loss_impl}
        save_checkpoint(run.output_dir, step, training_state(run.base, run.optimizer, run.scheduler, run.ema, run.accelerator.scaler),
                        meta, write=run.accelerator.is_main_process, keep=train_cfg.keep_checkpoints)
        run.accelerator.wait_for_everyone()


def evaluate_and_sample(run: TrainingRun, record: dict, bar) -> None:
    """When due (train.eval_every, train.sample_every, the last step): the held-out metrics of the EMA
    weights into record, and samples (diffusion) to ``samples/`` and the console. Every rank runs them with
    the same seed (a sharded model needs all ranks in a forward); the main process writes the results."""
    train_cfg, accelerator, step = run.train, run.accelerator, record["step"]
    evaluate_now = due(step, train_cfg.eval_every, train_cfg.steps)
    sample_now = train_cfg.objective == "diffusion" and due(step, train_cfg.sample_every, train_cfg.steps)
    if not (evaluate_now or sample_now):
        return
    with ema_weights(run.ema):
        if evaluate_now:
            record.update(evaluate(run.base, run.recipe, run.validation, accelerator, run.context))
            if accelerator.is_main_process:
                bar.write(eval_line(step, record))
        if sample_now:
            texts = generate_samples(run.base, run.tokenizer, run.recipe, accelerator.device, run.validation)
            if accelerator.is_main_process:
                write_samples(texts, step, run.output_dir)
                for text in texts:
                    bar.write(f"[step {step}] {text[:200]!r}")


def finish(run: TrainingRun, progress: bool) -> Path:
    """After the last step: check that the processes agree, export ``final`` (EMA weights + tokenizer),
    print the report with a showcase (progress=True), end the trackers; returns ``final``."""
    accelerator = run.accelerator
    check_ranks_in_sync(accelerator, run.base, run.metrics_file)
    final = export(accelerator, run.model, run.ema, run.tokenizer, run.output_dir, progress=progress, finetune=run.recipe.finetune)
    if accelerator.is_main_process:
        print(f"exported {final}")
    if progress:
        lines = []
        if run.train.objective == "diffusion":
            with ema_weights(run.ema):
                lines = showcase(run.base, run.tokenizer, run.recipe, run.validation, accelerator.device)
        if accelerator.is_main_process:
            print(report(run.recipe, len(run.validation), run.metrics_file, lines))
    accelerator.wait_for_everyone()  # destroying the process group while a peer still works can hang (gloo; seen once in the suite)
    accelerator.end_training()
    return final


def check_ranks_in_sync(accelerator, model, metrics_file: Path) -> None:
    """Gather a fingerprint of every process's weights (per-parameter sums of squares), record them, and
    raise if any process differs from the first."""
    fingerprint = torch.stack([whole(p.detach()).double().square().sum() for p in model.parameters()])
    gathered = accelerator.gather(fingerprint[None].to(accelerator.device)).cpu()
    in_sync = bool((gathered == gathered[:1]).all())
    if accelerator.is_main_process:
        with metrics_file.open("a") as f:
            f.write(json.dumps({"ranks_in_sync": in_sync, "weight_fingerprints": gathered.tolist()}) + "\n")
    if not in_sync:
        raise RuntimeError("the processes' weights diverged; see weight_fingerprints in " + str(metrics_file))


def export(accelerator, model, ema: EMA | None, tokenizer, output_dir: Path, *, progress: bool = True, finetune=None) -> Path:
    """Save the EMA weights and the tokenizer as a ``from_pretrained`` directory, ``output_dir/final``.

    model: the prepared model. Its whole state dict is gathered on every rank (a collective under FSDP
    and DeepSpeed ZeRO-3) while the EMA weights are loaded, and the main process writes it.
    progress=False: no "Writing model shards" bar from transformers. finetune: the recipe's ``FinetuneConfig``;
    with LoRA adapters (lora_rank > 0) they are saved to ``output_dir/adapter`` and then merged into the weights
    that ``final`` holds (the model stays merged).
    """
    final = output_dir / FINAL
    with ema_weights(ema):
        if finetune is not None and finetune.lora_rank:
            from .lora import merge_lora, save_adapter

            base = accelerator.unwrap_model(model)
            if accelerator.is_main_process:
                save_adapter(base, output_dir / ADAPTER, rank=finetune.lora_rank, alpha=finetune.lora_alpha,
                             dropout=finetune.lora_dropout, target_modules=finetune.lora_target_modules)
            merge_lora(base, dtype=torch.float32)  # a 16-bit base (finetune.dtype) would round the updates away
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            with loading_progress(progress):
                accelerator.unwrap_model(model).save_pretrained(final, state_dict=state)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(final)
        write_model_manifest(final)
    accelerator.wait_for_everyone()
    return final
