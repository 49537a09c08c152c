"""What one training step computes: its random draws (functions of the seed and the step only, so a resumed run
draws what the uninterrupted run drew), the loss of a micro-batch under the recipe's objective and loss path, label
dropout, and the ``torch.compile`` of the network for ``train.compile``."""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from ..core.losses import ar_loss, dwdse_loss
from ..likelihood.bounds import batch_uniforms, training_times
from ..models import DDLMConfig
from .finetune import WithArguments, sft_loss


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """The generator of one step on one process: a function of (seed, step, rank) only, so a resumed run
    draws exactly what the uninterrupted run drew."""
    state = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    torch.manual_seed(state)  # dropout
    return torch.Generator(device).manual_seed(state)


def time_generator(seed: int, step: int, device) -> torch.Generator:
    """The generator of one step's diffusion times over the whole global batch: a function of (seed, step)
    only, the same on every process, and independent of every ``step_generator``."""
    state = int(np.random.SeedSequence([seed, step], spawn_key=(2,)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device).manual_seed(state)


def annealing_generator(seed: int, step: int, device) -> torch.Generator:
    """The generator of one step's attention pattern under finetune.anneal_steps: a function of (seed, step) only, the
    same on every process, independent of the step's other draws."""
    state = int(np.random.SeedSequence([seed, step], spawn_key=(3,)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device).manual_seed(state)


def micro_batch_uniforms(train, step: int, rank: int, world_size: int, device) -> list[torch.Tensor] | None:
    """This process's uniforms for the diffusion times of one step: one Float64[micro_batch_size] tensor per
    micro-batch, sliced from a single draw over the global batch (``batch_uniforms`` with train.t_sampling,
    from ``time_generator``) the way the data is sliced: process ``rank`` takes the rank-th contiguous
    part, then its micro-batches in order. So global slot j belongs to the step's j-th sequence whatever the
    split into processes x accumulation. None for t_sampling='iid' (each micro-batch draws its times from
    the step's generator, as the loop always did)."""
    if train.t_sampling == "iid":
        return None
    u = batch_uniforms(train.global_batch_size, train.t_sampling, time_generator(train.seed, step, device), device)
    local = train.global_batch_size // world_size
    return list(u[rank * local:(rank + 1) * local].split(train.micro_batch_size))


def drop_labels(labels: torch.Tensor, probability: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """Labels Long[B] with each one replaced by ``null_class`` with ``probability``, independently (one
    uniform draw per label from ``generator``): the label dropout that trains the unconditional score of
    a class-conditional model for classifier-free guidance."""
    coins = torch.rand(labels.shape, generator=generator, device=labels.device, dtype=torch.float64)
    return torch.where(coins < probability, null_class, labels)


def with_labels(model, class_labels: torch.Tensor | None):
    """``model`` as a function of (input_ids, sigma_bar, ...) with ``class_labels`` fixed (Long[B], or a
    0-dim class id for every sequence of every call); ``model`` itself for None."""
    return model if class_labels is None else WithArguments(model, model, class_labels=class_labels)


def resolved_loss_impl(train, config, sft: bool = False, distributed: str = "NO") -> str:
    """The loss implementation a step uses: train.loss_impl, or for ``auto`` the leanest exact one that applies —
    ``fused_head`` (no [tokens x S] tensor) for a time-conditioned ddlm diffusion model that does not predict x0,
    ``inplace`` (the gradient written over the log-scores) for other ddlm diffusion models and wherever the head's
    weight is sharded (FSDP, DeepSpeed), ``standard`` for AR models, SFT (only response rows are scored) and
    wrapped open-weight networks. config: the model's config; distributed: accelerate's distributed type."""
    if train.loss_impl != "auto":
        return train.loss_impl
    if train.objective == "ar" or sft or not isinstance(config, DDLMConfig):
        return "standard"
    if distributed in ("FSDP", "DEEPSPEED") or config.predict_x0 or not config.time_conditioning:
        return "inplace"
    return "fused_head"


def objective_loss(model, x0: torch.Tensor, train, graph, noise, generator, class_labels: torch.Tensor | None = None,
                   head=None, uniforms: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None, loss_impl: str | None = None) -> torch.Tensor:
    """Scalar loss of a micro-batch, nats per token; graph and noise are the (unwrapped) model's.
    class_labels: Long[B] class ids of a class-conditional model (after label dropout), else None.
    head: the unwrapped model, whose output head ``train.loss_impl: fused_head`` fuses into the loss.
    uniforms: Float64[B], this micro-batch's slice of the global draw (``micro_batch_uniforms``); None:
    drawn i.i.d. from ``generator``. train.t_importance turns them into importance-weighted times.
    prompt_mask: Bool[B, L] of SFT examples (``ddlm.training.finetune.sft_loss``: the prompt clamped, the loss per
    response token). attention_mask: Bool[L, L], the attention pattern of an annealing step (``ddlm.training.adapt``).
    loss_impl: the implementation (``resolved_loss_impl``); None: train.loss_impl resolved for ``head``'s config."""
    if attention_mask is not None:
        model = WithArguments(model, head, attention_mask=attention_mask)
    if train.objective == "ar":
        return ar_loss(with_labels(model, class_labels), x0)
    impl = loss_impl or resolved_loss_impl(train, getattr(head, "config", None), prompt_mask is not None)
    fused = impl == "fused_head"
    if fused and head is None:
        raise ValueError("train.loss_impl='fused_head' needs head, the unwrapped model whose output head the loss applies")
    t = weights = None
    if uniforms is not None or train.t_importance is not None:
        if uniforms is None:  # i.i.d. from the step's generator, the same draws the default path makes
            uniforms = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=x0.device)
        t, weights = training_times(uniforms, train.t_min, train.t_importance, train.t_importance_power)
    if prompt_mask is not None:
        return sft_loss(with_labels(model, class_labels), graph, noise, x0, prompt_mask, train.t_min, generator, t=t, weights=weights).mean()
    return dwdse_loss(with_labels(model, class_labels), graph, noise, x0, train.t_min, generator,
                      inplace=impl == "inplace", head=head if fused else None, t=t, weights=weights).mean()


COMPILE_BACKEND = "inductor"  # torch.compile's backend for train.compile (tests use a lighter one)


class CompileUnavailableError(ValueError):
    """``train.compile: true`` where ``torch.compile`` cannot run (unsupported platform, no C++ compiler, a failed compile)."""


def compile_for_training(model, device: torch.device):
    """``torch.compile(model)`` for the training steps, after checking that it can run here; the module
    itself is unchanged (checkpoints, evaluation and sampling use it, uncompiled, with its own key names).
    Raises CompileUnavailableError saying how to turn it off."""
    off = "set train.compile=false (or compile: false in the recipe's train section) to train without it"
    compile_fn = getattr(torch, "compile", None)
    try:
        from torch import _dynamo

        supported = compile_fn is not None and _dynamo.is_dynamo_supported()
    except Exception as error:  # noqa: BLE001 - any failure to import or query dynamo means no compile
        raise CompileUnavailableError(f"train.compile: torch.compile is unavailable here ({type(error).__name__}: {error}); {off}") from None
    if not supported:
        raise CompileUnavailableError(f"train.compile: torch.compile does not support this platform (torch {torch.__version__}); {off}")
    if COMPILE_BACKEND == "inductor" and device.type == "cpu":
        compilers = [os.environ.get("CXX")] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
        if not any(shutil.which(name) for name in compilers):
            raise CompileUnavailableError(f"train.compile: torch.compile's inductor backend needs a C++ compiler on the CPU "
                                          f"(none of {compilers} found on PATH); install one or {off}")
    return compile_fn(model, backend=COMPILE_BACKEND)


def compile_failure(error: Exception) -> CompileUnavailableError:
    """The error to raise when the compiled model fails to compile at its first call."""
    cause = getattr(error, "inner_exception", None) or error  # a backend's failure is wrapped in BackendCompilerFailed
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return CompileUnavailableError(f"train.compile: torch.compile failed on the first training step ({type(cause).__name__}: "
                                   f"{first[:300]}); set train.compile=false to train without it")
