"""Fine-tuning: the model a run starts from (``finetune.init_from``), and the SFT loss.

``start_model`` loads a trained diffusion model of any family ddlm reads and can save again, or, with
``finetune.adapt``, a causal LM turned into an absorbing diffusion model (``ddlm.training.adapt``). LoRA adapters
(``finetune.lora_rank``) are added by ``ddlm.training.lora``.

The SFT loss. A block holds a prompt (``prompt_mask``) and the response after it. The prompt is clamped to its
clean tokens at every time: only the response positions are noised (each with the model's own forward process)
and scored, with the score-entropy weights of pretraining. ``clamped_dwdse`` is the integrand of
``conditional_nll_bound``, so for each sequence the loss is a one-sample Monte Carlo estimate of

    (1 / |response|) * (1 / (1 - t_min)) * integral over [t_min, 1] of the bound's integrand,

and with t_min = 0 plus the prior term (zero for the absorbing process at t = 1 with a fully masked base), the
bound on -log p(response | prompt) per response token; ``tests/test_sft.py`` checks its mean against the exact
conditional likelihood of a known distribution. Sequences are weighted equally (each one's loss is divided by its
own response length, as LLaDA normalises), so the loss does not depend on how a batch is split into micro-batches.
"""

from __future__ import annotations

import torch

from ..likelihood.bounds import clamped_dwdse
from ..models import DDLMForDiffusion


class WithArguments:
    """``model`` called with extra keyword arguments fixed (``attention_mask``, ``class_labels``), keeping the row
    protocol of ``ddlm.score`` (``accepts_positions``) of the unwrapped model ``base``."""

    def __init__(self, model, base, **kwargs):
        self.model, self.kwargs = model, kwargs
        self.accepts_positions = getattr(base, "accepts_positions", False) is True

    def __call__(self, *args, **kwargs):
        return self.model(*args, **self.kwargs, **kwargs)


def sft_loss(score_fn, graph, noise, x0: torch.Tensor, prompt_mask: torch.Tensor, t_min: float = 1e-3,
             generator: torch.Generator | None = None, *, t: torch.Tensor | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """The SFT loss of each sequence, [B] nats per response token (see the module docstring).

    x0 Long[B, L] clean blocks; prompt_mask Bool[B, L] (True: clamped prompt); t Float64[B] in [t_min, 1] (None: drawn
    uniformly from ``generator``); weights [B] importance weights p(t) / q(t) (None: 1)."""
    free = ~prompt_mask
    count = free.sum(1)
    if bool((count == 0).any()):
        raise ValueError("a sequence has no response position (its prompt_mask is all True)")
    if t is None:
        t = t_min + (1 - t_min) * torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=x0.device)
    loss = clamped_dwdse(score_fn, graph, noise, x0, free, t, generator) / count
    return loss if weights is None else loss * weights


def start_model(finetune, *, progress: bool = True) -> tuple[torch.nn.Module, object]:
    """(model in train mode, tokenizer) that a fine-tuning run starts from (``FinetuneConfig``): the diffusion model
    ``init_from``, or with ``adapt`` the causal LM ``init_from`` turned into one. ValueError naming finetune.init_from for
    a model that cannot be fine-tuned (an AR model without adapt, a family ddlm cannot save). The weights are cast to
    finetune.dtype whatever init_from was saved in."""
    from ..text.loading import load_model

    path, dtype = finetune.init_from, getattr(torch, finetune.dtype)
    if finetune.adapt:
        model, tokenizer = _adapted(path, finetune.shift_logits, dtype, progress)
    else:
        model, tokenizer = load_model(path, dtype=dtype, progress=progress)
        if isinstance(model, DDLMForDiffusion) and model.config.objective == "ar":
            raise ValueError(f"finetune.init_from {path} is an autoregressive model: set finetune.adapt=true to start a diffusion "
                             "model from it")
        check_savable(model, path)
    return model.train(), tokenizer


def _adapted(path: str, shift_logits: bool, dtype: torch.dtype, progress: bool):
    """(diffusion model, tokenizer) adapted from the causal LM at ``path``, in ``dtype``: ddlm's own AR model or a
    transformers one."""
    from ..models.families import read_config
    from ..text.loading import load_model
    from .adapt import adapt_ar_model

    if str(read_config(path).get("model_type")) == "ddlm":
        ar, tokenizer = load_model(path, dtype=dtype, progress=progress)
        return adapt_ar_model(ar, shift_logits), tokenizer
    from ..models.adapted_causal import adapt_causal_lm

    return adapt_causal_lm(path, shift_logits=shift_logits, dtype=dtype)


def check_drawable(model, examples, tokenizer) -> None:
    """ValueError naming the first SFT example whose response (EOS padding included) holds a token ``model`` never draws
    (a masked LM's special tokens, ids past its tokenizer): its loss would be infinite. Models without ``drawable``
    draw every token."""
    drawable = getattr(model, "drawable", None)
    prompts = getattr(examples, "prompt_mask", None)
    if drawable is None or prompts is None:
        return
    tokens = examples[:]
    bad = ~drawable.to(tokens.device)[tokens] & ~prompts
    if bool(bad.any()):
        row, position = (int(i) for i in bad.nonzero()[0])
        token = int(tokens[row, position])
        raise ValueError(f"SFT example {row}: its response holds token {token} ({tokenizer.convert_ids_to_tokens(token)!r}), which "
                         f"the {getattr(model, 'family', 'model')} model never draws (a special token; responses are padded with "
                         "EOS, which such a model must be able to produce): fine-tune a model that draws EOS")


def check_savable(model, path) -> None:
    """ValueError unless the run can export ``model`` as a directory ``load_model`` reads back."""
    if isinstance(model, DDLMForDiffusion):
        return
    network = getattr(model, "network", None)
    if not callable(getattr(network, "save_pretrained", None)):
        family = getattr(model, "family", type(model).__name__)
        raise ValueError(f"finetune.init_from {path}: ddlm cannot save a {family} model in a layout it loads again, so it does not "
                         "fine-tune one (every family load_model reads can be saved; this network was wrapped by hand)")
