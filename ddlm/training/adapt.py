"""Starting an absorbing diffusion model from an autoregressive one, and annealing its attention.

``adapt_ar_model`` turns ddlm's AR baseline (``DDLMConfig.objective == "ar"``) into a time-independent absorbing
diffusion model of the same network (RADD / MDLM's parameterisation: the head predicts p(x0_i | x_t), which for the
absorbing process does not depend on the time), keeping every weight:

- the embedding gains one row, the mask (id N), initialised as the mean of the N token rows;
- the head gains the mask's output row (zero; the mask is never predicted);
- the adaLN conditioning, which the AR model computes from a constant (SiLU of its time embedding at 0), becomes the
  time-independent model's learned constant with exactly that value;
- ``shift_logits`` (default, Dream's choice): the output for token i is read at position i - 1, so the next-token
  head keeps its meaning. With a causal attention pattern the adapted model then predicts the first masked token
  after a clean prefix exactly as the AR model predicts the next token (a test checks it).

Transformers causal LMs (GPT-2, Llama, Qwen2) are adapted by ``ddlm.models.adapted_causal``.

Attention-mask annealing (DiffuLLaMA): the adapted network first attends causally, as it was trained, and each query
is then allowed to see more of the future as training goes on. ``annealed_attention_mask`` re-states it as: at
progress a = step / anneal_steps, every key after the query is visible with probability a, independently, drawn
once per optimizer step (the same pattern for every sequence of the step); from a = 1 on, attention is fully
bidirectional, as it stays for sampling and evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import DDLMConfig, DDLMForDiffusion


def adapted_config(config: DDLMConfig, shift_logits: bool = True) -> DDLMConfig:
    """The diffusion config of an AR ``config``: the same network, absorbing, time-independent."""
    if config.objective != "ar":
        raise ValueError(f"finetune.adapt starts from an autoregressive model; this one has objective={config.objective!r} "
                         "(fine-tune it without finetune.adapt)")
    if config.num_classes:
        raise ValueError("finetune.adapt supports unconditional AR models; this one has num_classes="
                         f"{config.num_classes} (its classes condition through the time embedding, which adaptation removes)")
    values = {key: value for key, value in config.to_dict().items() if key in DDLMConfig.__annotations__}
    values.update(objective="diffusion", process="absorbing", time_conditioning=False, predict_x0=None, scale_by_sigma=None,
                  shift_logits=shift_logits)
    return DDLMConfig(**values)


@torch.no_grad()
def adapt_ar_model(ar: DDLMForDiffusion, shift_logits: bool = True) -> DDLMForDiffusion:
    """A new time-independent absorbing ``DDLMForDiffusion`` holding ``ar``'s weights (see the module docstring);
    its dtype and device are ``ar``'s."""
    config = adapted_config(ar.config, shift_logits)
    weight = ar.embed_tokens.weight
    model = DDLMForDiffusion(config).to(dtype=weight.dtype, device=weight.device)
    source = ar.state_dict()
    target = model.state_dict()
    for name, value in source.items():
        if name in target and target[name].shape == value.shape:
            target[name].copy_(value)
    vocab = config.vocab_size
    target["embed_tokens.weight"][:vocab] = source["embed_tokens.weight"]
    target["embed_tokens.weight"][vocab] = source["embed_tokens.weight"].mean(0)
    target["lm_head.weight"][:vocab] = source["lm_head.weight"]
    target["lm_head.weight"][vocab] = 0
    target["lm_head.bias"][:vocab] = source["lm_head.bias"]
    target["lm_head.bias"][vocab] = 0
    zero = torch.zeros(1, dtype=torch.float32 if weight.dtype != torch.float64 else torch.float64, device=weight.device)
    target["cond_embed.weight"].copy_(F.silu(ar.time_embed(zero))[0])
    model.load_state_dict(target)
    return model.train(ar.training)


def causal_mask(length: int, device=None) -> torch.Tensor:
    """Bool[L, L], True on and below the diagonal: query i sees keys 0..i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def annealed_attention_mask(length: int, step: int, anneal_steps: int, generator: torch.Generator,
                            device=None) -> torch.Tensor | None:
    """The attention pattern of optimizer step ``step`` (1-based) of an annealing over ``anneal_steps`` steps: Bool[L, L]
    (causal, plus each future key with probability (step - 1) / anneal_steps), or None (bidirectional) once the
    annealing is over or without one. ``generator``: the step's, so a resumed run draws the same patterns."""
    if anneal_steps <= 0 or step > anneal_steps:
        return None
    progress = (step - 1) / anneal_steps
    future = torch.rand(length, length, generator=generator, device=generator.device, dtype=torch.float64) < progress
    return (causal_mask(length, generator.device) | future).to(device or generator.device)
