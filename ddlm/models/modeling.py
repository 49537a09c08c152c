"""``DDLMForDiffusion``: a DiT-style bidirectional transformer that outputs log-scores.

Architecture (SEDD's DDiT): token embedding; sinusoidal embedding of sigma_bar -> MLP -> SiLU
gives the conditioning vector c; each block is pre-LayerNorm attention and MLP with adaLN-Zero
modulation (shift, scale, gate from c), rotary positions on q and k, and
``scaled_dot_product_attention`` (flash kernels on GPU, plain math on CPU); a final
adaLN-modulated LayerNorm and a linear head. The head's outputs become log-scores with log s = 0
at the current token and, for absorbing models, the "scale by sigma" shift.

Class-conditional models (``config.num_classes = K > 0``) add a learned class embedding (K + 1
rows, the last the null class) to the conditioning vector before the adaLN modulations read it, as
DiT does; ``model(x_t, sigma_bar, class_labels=...)`` picks the class per sequence.

Time-independent absorbing models (``config.time_conditioning=False``, RADD-style) have no time
embedding: the adaLN conditioning vector is one learned constant, and the head predicts
p(x0_i = y | x_t) over the N real tokens; log-scores are log p(y | x_t) - log(e^sigma_bar - 1) at
masked positions (``time_independent_log_scores`` derives it). Such a model
sets ``time_independent = True`` (``ddlm.score``) so samplers can reuse its outputs. A time-conditioned
model with ``config.predict_x0=True`` (MDLM's SUBS with time conditioning) has the same head and
log-scores, its conditioning the time embedding.

The autoregressive baseline (``config.objective == "ar"``) is the same network with causal
attention and no mask state: the head's outputs go through ``log_softmax`` and position i gives
log p(token i+1 | tokens 0..i). It keeps every module, the sigma_bar conditioning included
(always fed sigma_bar = 0, so the time MLP and the adaLN modulations act as learned constant
shifts, scales and gates), so the two objectives train networks with the same parameter count
and the same per-token cost: a like-for-like baseline.
"""

from __future__ import annotations

import json
import math
import os
import pickle

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging as transformers_logging

from ..core.manifest import remove_model_manifest, verify_model_dir
from ..core.processes import check_noise_level, check_token_ids
from ..core.score import row_index
from .configuration import DDLMConfig


def timestep_embedding(sigma_bar: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of sigma_bar [B] -> [B, dim], [cos | sin] halves."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=sigma_bar.device, dtype=torch.float32) / half)
    args = sigma_bar.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotary_tables(length: int, head_dim: int, base: float, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, head_dim] of rotate-half rotary embeddings in ``dtype`` (float32 or float64); the
    frequencies are computed in fp32 whatever the dtype, as SEDD's and MDLM's rotary buffers are."""
    inv_freq = (1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)).to(dtype)
    angles = torch.outer(torch.arange(length, device=device, dtype=dtype), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, L, d] by position: x cos + rotate_half(x) sin."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.to(cos.dtype) * cos + rotated.to(cos.dtype) * sin).to(x.dtype)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the network's fp32 parts compute in: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, H] * (1 + scale) + shift, with shift/scale [B, H]."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _check_local_checkpoint(path: str | os.PathLike) -> None:
    """Clear errors for a local path that is missing or is not a ddlm model directory (hub ids pass)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if path.startswith(("/", ".", "~")) or path.count("/") != 1:
            raise FileNotFoundError(f"no model directory at {path}")
        return  # a hub id
    config = os.path.join(path, "config.json")
    values = read_config_file(config) if os.path.isfile(config) else {}
    if values.get("model_type") != DDLMConfig.model_type:
        raise ValueError(f"{path} is not a ddlm model directory (expected a config.json with model_type 'ddlm'); "
                         "convert an official SEDD or MDLM checkpoint with `ddlm convert PATH OUT`")
    try:
        DDLMConfig.from_dict(values)
    except (TypeError, ValueError, AttributeError) as error:  # a field of the wrong kind or out of range
        raise ValueError(f"{config}: {error}") from None


def read_config_file(path: str) -> dict:
    """The JSON object in a config.json, or a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object of config fields, got {type(values).__name__}")
    return values


def pickle_refused(what: str, error: Exception) -> ValueError:
    """The one-line error for a pickle that ``torch.load(weights_only=True)`` refused, naming the file (``what``)."""
    reason = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
    return ValueError(f"refused {what}: it is not a plain tensor checkpoint (it holds pickled objects other than tensors "
                      "and containers, possibly code, which ddlm never unpickles)" + (f"; {reason}" if reason else ""))


def _pickled_weights(path) -> str:
    """The pickled weight files (``pytorch_model*.bin``) of a local model directory, for error messages."""
    path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "the checkpoint"
    names = sorted(n for n in os.listdir(path) if n.startswith("pytorch_model") and n.endswith(".bin")) if os.path.isdir(path) else []
    return ", ".join(os.path.join(path, name) for name in names) or f"the pytorch_model.bin weights of {path}"


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in fp32 (fp64 for fp64 inputs)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = wide_dtype(x.dtype)
        return F.layer_norm(x.to(dtype), (x.shape[-1],), self.weight.to(dtype), None, self.eps)


class Modulation(nn.Linear):
    """adaLN: the conditioning vector -> ``chunks`` vectors of size dim (zero-initialised)."""

    def __init__(self, cond_dim: int, dim: int, chunks: int):
        super().__init__(cond_dim, chunks * dim)
        self.chunks = chunks

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(c).chunk(self.chunks, dim=-1)


class TimeEmbedding(nn.Module):
    """sigma_bar [B] -> sinusoidal features -> Linear -> SiLU -> Linear: [B, cond_dim]."""

    def __init__(self, features: int, cond_dim: int):
        super().__init__()
        self.features = features
        self.linear_1 = nn.Linear(features, cond_dim)
        self.linear_2 = nn.Linear(cond_dim, cond_dim)

    def forward(self, sigma_bar: torch.Tensor) -> torch.Tensor:
        h = timestep_embedding(sigma_bar, self.features).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(h)))


class ConstantCondition(nn.Module):
    """The conditioning of a time-independent model (``time_conditioning=False``): one learned
    vector [cond_dim] for every sequence, so each adaLN shift, scale and gate is a learned
    per-layer constant. Initialised Normal(0, initializer_range); the modulations stay zero at
    initialisation (adaLN-Zero), so every block starts as the identity as with time conditioning."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cond_dim))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.expand(batch, -1)


class Attention(nn.Module):
    """Multi-head self-attention with packed q|k|v and rotary positions; bidirectional for
    diffusion models, causal for autoregressive ones."""

    def __init__(self, config: DDLMConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.causal = config.objective == "ar"
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, H]; attention_mask: Bool[L, L] (True: query i may attend key j) in place of the model's own pattern."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if attention_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))


class MLP(nn.Module):
    def __init__(self, config: DDLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_ratio * config.hidden_size)
        self.fc2 = nn.Linear(config.mlp_ratio * config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DDLMBlock(GradientCheckpointingLayer):
    """x + gate * attn(modulate(LN(x))), then x + gate * mlp(modulate(LN(x))); x [B, L, H], c [B, cond]."""

    def __init__(self, config: DDLMConfig):
        super().__init__()
        self.norm1 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = MLP(config)
        self.modulation = Modulation(config.cond_dim, config.hidden_size, 6)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        h = modulate(self.norm1(x), shift_attn, scale_attn).to(x.dtype)
        x = x + gate_attn[:, None] * self.dropout(self.attn(h, cos, sin, attention_mask))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp).to(x.dtype)
        return x + gate_mlp[:, None] * self.dropout(self.mlp(h))


class DDLMPreTrainedModel(PreTrainedModel):
    config_class = DDLMConfig
    base_model_prefix = "ddlm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DDLMBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) linears and embeddings; adaLN-Zero: the modulations and an
        untied output head start at zero (log-scores start at the scale-by-sigma prior)."""
        std = self.config.initializer_range
        zero_head = module is getattr(self, "lm_head", None) and not self.config.tie_word_embeddings
        if isinstance(module, ConstantCondition):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Modulation) or zero_head:
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LayerNorm):
            init.ones_(module.weight)


def class_ids(num_classes: int, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
    """Checked class ids Long[batch] of ``class_labels`` ([batch] or a scalar broadcast to every sequence; None:
    the null class) for a model of ``num_classes`` classes; None for an unconditional model (num_classes 0),
    which refuses labels."""
    if not num_classes:
        if class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (config.num_classes=0); "
                             "train a class-conditional model with num_classes > 0, or leave class_labels None")
        return None
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
        raise TypeError(f"class_labels must be an integer tensor [batch] of class ids, got {class_labels!r:.80}")
    if class_labels.dim() == 0:
        class_labels = class_labels.expand(batch)
    if tuple(class_labels.shape) != (batch,):
        raise ValueError(f"class_labels must have shape [batch] = [{batch}] (one class per sequence), got {list(class_labels.shape)}")
    if batch and not bool(((class_labels >= 0) & (class_labels <= num_classes)).all()):
        bad = class_labels[(class_labels < 0) | (class_labels > num_classes)][0].item()
        raise ValueError(f"class_labels must lie in [0, {num_classes}] (classes 0..{num_classes - 1}, the null class "
                         f"{num_classes}), got {bad}")
    return class_labels.to(device=device, dtype=torch.long)


def checked_sigma_bar(config: DDLMConfig, graph, input_ids: torch.Tensor, sigma_bar, positions, output_hidden: bool):
    """``DDLMForDiffusion.forward``'s argument checks (ValueError naming the argument); returns sigma_bar, 0.0 for an AR model."""
    if check_token_ids(input_ids, None, "input_ids").dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    autoregressive = config.objective == "ar"
    if output_hidden and (autoregressive or config.predict_x0 or positions is not None):
        raise ValueError("output_hidden needs a time-conditioned diffusion model that does not predict x0, and no "
                         f"positions (got objective={config.objective!r}, time_conditioning={config.time_conditioning}, "
                         f"predict_x0={config.predict_x0}, "
                         f"positions {'given' if positions is not None else 'None'})")
    if autoregressive:
        if sigma_bar is not None:
            raise ValueError("an autoregressive model (objective='ar') takes no sigma_bar; call model(input_ids)")
        if positions is not None:
            raise ValueError("an autoregressive model (objective='ar') takes no positions")
        if not torch.compiler.is_compiling():  # a data-dependent check would split a compiled graph (train.compile)
            check_token_ids(input_ids, config.num_states, "input_ids")
        sigma_bar = 0.0  # the conditioning path is kept and fed a constant (see the module docstring)
    else:
        if sigma_bar is None:
            raise ValueError("a diffusion model needs sigma_bar, the total noise of input_ids: call model(x_t, sigma_bar)")
        if not torch.compiler.is_compiling():
            graph.check_tokens(input_ids, "input_ids")
            sigma_bar = check_noise_level(sigma_bar)
            if sigma_bar.dim() > 1 or (sigma_bar.dim() == 1 and sigma_bar.shape[0] != input_ids.shape[0]):
                raise ValueError(f"sigma_bar must be a scalar or [batch] = [{input_ids.shape[0]}], got shape {list(sigma_bar.shape)}")
    return sigma_bar


def checked_attention_mask(mask, length: int, autoregressive: bool, device) -> torch.Tensor:
    """``forward``'s attention_mask checked: Bool[L, L] with a True diagonal, for a diffusion model; on ``device``."""
    if autoregressive:
        raise ValueError("attention_mask applies to diffusion models; an autoregressive model attends causally")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (length, length):
        raise ValueError(f"attention_mask must be a Bool tensor [L, L] = [{length}, {length}], got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {list(getattr(mask, 'shape', []))}")
    if not bool(mask.diagonal().all()):
        raise ValueError("attention_mask must let every position attend to itself (a True diagonal)")
    return mask.to(device)


def time_independent_log_scores(logits: torch.Tensor, ids: torch.Tensor, shift: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Log-scores [R, N + 1] of a time-independent absorbing model from its head's rows.

    logits [R, N + 1] (float32, or float64 for a float64 model; edited in place); ids Long[R] the current token of each row;
    shift [R] = log(e^sigma_bar - 1); mask_id = N. The head predicts p(x0_i = y | x_t) over the N real
    tokens (log-softmax, the mask column excluded). Absorbing noise masks each token
    independently and a mask carries no information, so for a masked position i

        p_t(x^{i<-y}) / p_t(x) = e^-sigma_bar / (1 - e^-sigma_bar) * p0(x_i = y | unmasked tokens of x)
                               = p(y | x_t) / (e^sigma_bar - 1),

    (both sequences have the same unmasked tokens but one, which costs e^-sigma_bar against
    the mask's 1 - e^-sigma_bar), hence log s_y = log p(y | x_t) - log(e^sigma_bar - 1),
    0 at the mask (the current token). At a real (unmasked) position every reverse rate is
    0 (Q[y, x] = 0): log s = 0 at the current token and -inf elsewhere. These entries carry
    no weight in the loss, the bound or any sampler; the exact ratios there are finite but
    unused (see ``ddlm.oracle``).
    """
    logits[:, mask_id] = float("-inf")
    log_p = torch.log_softmax(logits, dim=-1)  # over the N real tokens; the mask column stays -inf
    masked = (ids == mask_id)[:, None]
    out = log_p - torch.where(masked[:, 0], shift, 0.0)[:, None]  # a new tensor: log_softmax keeps its output
    out.masked_fill_(~masked, float("-inf"))
    return out.scatter_(-1, ids[:, None], 0.0)


class DDLMForDiffusion(DDLMPreTrainedModel):
    """The ratio network: ``model(x_t, sigma_bar)`` -> log-scores [B, L, S] (float32).

    Usable directly as a ``score_fn``. The forward process and schedule it was trained for are
    ``model.graph`` and ``model.noise`` (from the config).

    With ``config.objective == "ar"`` it is the autoregressive baseline on the same network:
    ``model(input_ids)`` -> next-token log-probabilities [B, L, N] (float32), position i
    predicting token i + 1; ``model.graph`` and ``model.noise`` are None. Train it with
    ``ddlm.losses.ar_loss`` and evaluate it exactly with ``ddlm.losses.ar_nll``.
    """

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: DDLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.num_states, config.hidden_size)
        if config.time_conditioning:
            self.time_embed = TimeEmbedding(config.time_embed_dim, config.cond_dim)
        else:  # a time-independent network never reads sigma_bar (see time_independent)
            self.cond_embed = ConstantCondition(config.cond_dim)
        if config.num_classes:  # K classes and the null class K
            self.class_embed = nn.Embedding(config.num_classes + 1, config.cond_dim)
        self.layers = nn.ModuleList(DDLMBlock(config) for _ in range(config.num_hidden_layers))
        self.final_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.final_modulation = Modulation(config.cond_dim, config.hidden_size, 2)
        self.lm_head = nn.Linear(config.hidden_size, config.num_states)
        autoregressive = config.objective == "ar"
        self.graph = None if autoregressive else config.graph()
        self.noise = None if autoregressive else config.noise()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @property
    def time_independent(self) -> bool:
        """True for ``config.time_conditioning=False``: the score protocol of ``ddlm.score``
        (``is_time_independent``) under which samplers reuse network outputs across steps."""
        return not self.config.time_conditioning

    @property
    def accepts_positions(self) -> bool:
        """Diffusion models take ``positions=`` (the row-restricted score protocol of ``ddlm.score``)."""
        return self.config.objective != "ar"

    def forward(
        self, input_ids: torch.Tensor, sigma_bar: torch.Tensor | float | None = None, positions: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None, output_hidden: bool = False, attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids Long[B, L] in [0, S); sigma_bar: [B] or a scalar (total noise, not t) -> [B, L, S].

        Diffusion models need sigma_bar and return log-scores. Autoregressive models take no
        sigma_bar (leave it None) and return next-token log-probabilities: ``out[b, i]`` is
        log p(x_{i+1} | x_0..x_i), normalised over the N tokens; the last position predicts
        the token after the sequence.

        positions (diffusion models): Bool[B, L], or Long[R] flat indices b * L + i; the output
        head then runs only on those rows and the result is [R, S] in the order of
        ``input_ids[positions]`` (of the indices), equal to those rows of the full output. The
        transformer trunk is unchanged (every position still attends to every other).

        class_labels (class-conditional models, ``config.num_classes = K > 0``): Long[B] class ids
        in [0, K], K the null class ("no label"); None means the null class for every sequence.
        An unconditional model refuses class_labels.

        output_hidden (time-conditioned diffusion models without predict_x0, without positions): return the output
        head's input [B, L, H] instead of the log-scores, which are then
        ``lm_head(hidden) - log_score_shift(sigma_bar)`` (the shift with ``scale_by_sigma``) at every
        state but the current token's (ignored by every loss). ``ddlm.losses.linear_dse`` fuses
        that head with the loss so the [B, L, S] log-scores are never stored (``train.loss_impl:
        fused_head``).

        attention_mask (diffusion models): Bool[L, L], True where query position i may attend key position j,
        in place of full bidirectional attention (the diagonal must be True); the annealing from causal to
        bidirectional attention of a model adapted from an AR one (``ddlm.training.adapt``) passes it.

        ``config.shift_logits``: the output row of position i comes from the hidden state of position i - 1
        (position 0 from its own), as an autoregressive head reads it.
        """
        sigma_bar = checked_sigma_bar(self.config, self.graph, input_ids, sigma_bar, positions, output_hidden)
        autoregressive = self.config.objective == "ar"
        batch, length = input_ids.shape
        rows = None if positions is None else row_index(positions.to(input_ids.device), (batch, length))
        dtype = wide_dtype(self.embed_tokens.weight.dtype)  # float32, float64 for a float64 model
        sigma_bar = torch.as_tensor(sigma_bar, device=input_ids.device, dtype=dtype)
        sigma_bar = sigma_bar.expand(batch) if sigma_bar.dim() == 0 else sigma_bar.reshape(batch)
        classes = class_ids(self.config.num_classes, class_labels, batch, input_ids.device)
        if self.config.time_conditioning:
            c = self.time_embed(sigma_bar)
            c = F.silu(c if classes is None else c + self.class_embed(classes))
        else:
            c = self.cond_embed(batch)
            if classes is not None:
                c = c + self.class_embed(classes)
        cos, sin = rotary_tables(length, self.config.head_dim, self.config.rotary_base, input_ids.device, dtype)
        x = self.embed_tokens(input_ids)
        mask = None if attention_mask is None else checked_attention_mask(attention_mask, length, autoregressive, x.device)
        for layer in self.layers:
            x = layer(x, c, cos, sin, mask)
        shift, scale = self.final_modulation(c)
        h = modulate(self.final_norm(x), shift, scale).to(x.dtype)
        if self.config.shift_logits:  # token i is predicted from position i - 1's state (token 0 from its own)
            h = torch.cat([h[:, :1], h[:, :-1]], dim=1)
        if output_hidden:
            return h
        if autoregressive:
            return torch.log_softmax(self.lm_head(h).float(), dim=-1)
        # The head runs on [B L, H] rows so that its output is not a view, and the shift and the
        # zero at the current token are then applied in place: autograd keeps neither the output
        # nor a copy of it (in-place edits of a view would cost full-size copies in backward), and
        # on CPU every [B, L, S] temporary costs a page-faulted allocation as large as the pass.
        # With positions the head (most of the cost at a large vocabulary) runs on the chosen rows only.
        h, ids = h.flatten(0, 1), input_ids.reshape(-1, 1)
        if rows is not None:
            h, ids = h[rows], ids[rows]
        logits = self.lm_head(h).to(dtype)
        if self.config.predict_x0:  # time-independent models, and time-conditioned x0 predictors (MDLM's SUBS)
            shift = self.log_score_shift(sigma_bar, scale_by_vocabulary=False).repeat_interleave(length)
            return time_independent_log_scores(logits, ids.squeeze(1), shift if rows is None else shift[rows], self.config.vocab_size).view(
                (batch, length, logits.shape[-1]) if rows is None else (-1, logits.shape[-1]))
        if self.config.scale_by_sigma:
            shift = self.log_score_shift(sigma_bar).repeat_interleave(length)
            logits.sub_((shift if rows is None else shift[rows])[:, None])
        logits.scatter_(-1, ids, 0.0)
        return logits if rows is not None else logits.view(batch, length, logits.shape[-1])

    def log_score_shift(self, sigma_bar: torch.Tensor, scale_by_vocabulary: bool = True) -> torch.Tensor:
        """The absorbing "scale by sigma" offset log(e^sigma_bar - 1) + log N per sequence, [B] float32
        (float64 for a float64 sigma_bar; without the log N term for ``scale_by_vocabulary=False``: the
        time-independent factor)."""
        dtype = wide_dtype(sigma_bar.dtype)
        sigma_bar = sigma_bar.double().clamp_min(1e-30)
        return (torch.log(torch.expm1(sigma_bar)) + (math.log(self.config.vocab_size) if scale_by_vocabulary else 0.0)).to(dtype)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, first removing the manifest of an earlier save there (it would no longer
        match); ``DiffusionPipeline.save_pretrained`` and the training export write a new one once the tokenizer is saved."""
        remove_model_manifest(save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` that refuses checkpoints with missing or unexpected weights, and a
        directory whose files differ from its manifest (``ddlm.manifest``; one without a manifest loads unchecked)."""
        if args and isinstance(args[0], (str, os.PathLike)):
            _check_local_checkpoint(args[0])
            verify_model_dir(args[0])
        # Pickled weights (pytorch_model*.bin) are read only with torch.load(weights_only=True), which refuses
        # anything but tensors and containers; beside safetensors weights they are not read at all.
        if kwargs.get("weights_only", True) is not True:
            raise ValueError("weights_only=False is refused: ddlm never unpickles weights that may hold code")
        kwargs["weights_only"] = True
        if args and isinstance(args[0], (str, os.PathLike)) and any(
                os.path.isfile(os.path.join(args[0], name)) for name in ("model.safetensors", "model.safetensors.index.json")):
            kwargs.setdefault("use_safetensors", True)
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # shape mismatches are reported below, as errors
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # its load report would repeat the error raised below
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            where = args[0] if args else "the checkpoint"
            if args and os.path.isfile(weights := os.path.join(os.fspath(args[0]), "model.safetensors")):
                where = weights
            raise ValueError(f"{where} is not a readable safetensors file (corrupt or truncated?): {error}") from None
        except pickle.UnpicklingError as error:
            raise pickle_refused(_pickled_weights(args[0] if args else None), error) from None
        finally:
            transformers_logging.set_verbosity(verbosity)
        problems = [f"{name.replace('_', ' ')}: {sorted(keys)}" for name in ("missing_keys", "unexpected_keys") if (keys := info.get(name))]
        if mismatched := info.get("mismatched_keys"):
            problems.append("shapes differ from config.json's: " + ", ".join(
                f"{key} (checkpoint {list(saved)}, config {list(wanted)})" for key, saved, wanted in sorted(mismatched)))
        if problems:
            raise ValueError(f"checkpoint {args[0] if args else ''} does not match {cls.__name__}; " + "; ".join(problems))
        return (model, info) if want_info else model
