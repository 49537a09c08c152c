"""What a run carries from step to step and into its checkpoints: the EMA weights, the learning-rate schedule, the
model, optimizer, scheduler, EMA and gradient-scaler states, and the record of the model's shape."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch.distributed.tensor import DTensor

from ..models import DDLMConfig
from .checkpoints import CorruptCheckpoint, like, whole


class EMA:
    """Exponential moving average of parameters (float32 shadow copies), with SEDD's warm-up:
    decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update.

    The average is elementwise, so with FSDP2-sharded parameters (DTensors) each rank averages its own
    shard. The state dict holds whole tensors on the CPU (``state_dict`` is a collective then), so a
    checkpoint does not depend on the number of processes or the sharding it was written under.
    """

    def __init__(self, parameters, decay: float):
        self.parameters = list(parameters)
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for shadow, p in zip(self.shadow, self.parameters):
            shadow.lerp_(p.detach().float(), 1 - decay)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily load the averaged weights into the parameters."""
        saved = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for p, shadow in zip(self.parameters, self.shadow):
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.parameters, saved):
                    p.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [whole(s).cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.parameters):
            raise ValueError(f"the EMA state holds {len(state['shadow'])} tensors, the model has {len(self.parameters)} parameters")
        self.shadow = [like(saved, shadow, f"EMA tensor {i}") for i, (saved, shadow) in enumerate(zip(state["shadow"], self.shadow))]
        self.decay, self.updates = state["decay"], state["updates"]


def lr_lambda(train) -> callable:
    """Multiplier of the base learning rate at an optimizer step: linear warm-up, then the decay."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        progress = min(1.0, (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps))
        floor = train.min_lr_ratio
        if train.decay == "linear":
            return 1 - (1 - floor) * progress
        if train.decay == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def model_fields(config) -> dict:
    """What a checkpoint records of the model's shape: the ``DDLMConfig`` fields of a ddlm model, or the family,
    vocabulary and length of a wrapped open-weight network (``MaskedModelConfig``)."""
    if isinstance(config, DDLMConfig):  # a loaded model's config holds its torch dtype: recorded by name
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(DDLMConfig)}
        return {name: str(value) if isinstance(value, torch.dtype) else value for name, value in values.items()}
    return {"family": config.family, "vocab_size": config.vocab_size, "max_position_embeddings": config.max_position_embeddings}


def training_state(base, optimizer, scheduler, ema: EMA | None, scaler) -> dict:
    """What a checkpoint stores besides the step: the model, optimizer, scheduler, EMA and gradient-scaler
    states (FSDP2 shards are gathered into whole tensors when it is written)."""
    state = {"model": base.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    if ema is not None:
        state["ema"] = ema.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def load_training_state(state: dict, base, optimizer, scheduler, ema: EMA | None, scaler, train_cfg) -> None:
    """Load a checkpoint's ``training_state`` into this run's objects (each rank keeps its FSDP2 shards),
    then set the learning rate and weight decay of the current recipe (a resume may change them)."""
    try:
        current = base.state_dict()
        if missing := sorted(current.keys() - state["model"].keys()):
            raise CorruptCheckpoint(f"the checkpoint's model lacks {missing[:5]}")
        if unexpected := sorted(state["model"].keys() - current.keys()):
            raise CorruptCheckpoint(f"the checkpoint's model has parameters this model has not: {unexpected[:5]}")
        base.load_state_dict({name: like(state["model"][name], value, name) for name, value in current.items()})
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, values in state["optimizer"]["state"].items():
            for key, value in values.items():  # moments of FSDP2-sharded parameters: keep this rank's shard
                if isinstance(params[index], DTensor) and isinstance(value, torch.Tensor) and value.dim():
                    values[key] = like(value, params[index], f"optimizer state {key} of parameter {index}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    except (KeyError, IndexError, TypeError) as error:
        raise CorruptCheckpoint(f"the checkpoint's training state does not fit this run ({type(error).__name__}: {error})") from None
    factor = lr_lambda(train_cfg)
    scheduler.base_lrs = [train_cfg.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group.update(initial_lr=train_cfg.lr, lr=train_cfg.lr * factor(scheduler.last_epoch), weight_decay=train_cfg.weight_decay)
