"""``MaskedDiffusionModel``: any network that predicts p(x0 | x_t) at masked positions, as a ddlm score model.

Open-weight masked diffusion LMs (LLaDA, Dream, MDLM) and BERT-style masked LMs all read a
sequence in which some tokens are replaced by a mask token and output logits over the
vocabulary at every position. For the absorbing process the exact reverse ratios follow from
that prediction alone (``ddlm.models.modeling.time_independent_log_scores``)::

    log s_y = log p(x0_i = y | x_t) - log(e^sigma_bar - 1)   at a masked position i,

so such a network, wrapped here, runs every sampler, decoding strategy, bound and evaluation of ddlm.

State space. The network's output width V gives ``Absorbing(V)``: ddlm's real states are the
network's token ids 0..V-1, unchanged, so text encodes and decodes with the model's own
tokenizer; ddlm's mask state is V (one past the vocabulary), which this wrapper hands to the
network as its own ``mask_token_id`` (103 for BERT, 126336 for LLaDA: anywhere in the
vocabulary). Ids the model must never produce (``banned_ids``: the mask token itself, special
tokens of a masked LM, rows past the tokenizer's vocabulary) get probability 0; their log-scores
are -inf, which every sampler and bound treats as a ratio of exactly 0.

Fixed context. ``prefix_ids`` / ``suffix_ids`` (a masked LM's [CLS] ... [SEP]) are put around
every sequence before the network reads it and cut from its output: they are never noised and
never scored. ``shift_logits`` (Dream): the logits at position i predict token i + 1, so the
prediction for token i is read at position i - 1 (token 0 reads its own position's logits, as
Dream's sampler does).

Rows. Samplers ask for the log-scores of a few positions only (``model(x_t, sigma_bar, positions=P)``,
``ddlm.score``). A network that declares ``accepts_rows = True`` is then called as
``network(ids, sigma_bar, rows=R)``, R Long[R'] flat indices into its own [B, L'] input positions (the prefix and
Dream's shift already accounted for), and returns the logits of those positions only, [R', V]: its output head runs on
R' rows instead of B * L' (``HubMaskedLM`` and ``BidirectionalLM`` do). Other networks compute every position and the
rows are picked from their output. Without ``positions`` the network is always called as ``network(ids, sigma_bar)``.

Attention patterns. ``model(x_t, sigma_bar, attention_mask=M)``, M Bool[L, L] (True: position i attends to position j;
e.g. annealing from causal to bidirectional attention while adapting an autoregressive LM,
``ddlm.models.adapted_causal``), calls ``network(ids, sigma_bar, attention_mask=M)``: only networks that declare
``accepts_attention_mask = True``, and only without fixed prefix / suffix tokens.

Saving. ``model.save_pretrained(directory, state_dict=None)`` is the network's own ``save_pretrained`` (the adapted
causal LMs have one); for other networks it is a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.processes import Absorbing
from ..core.schedules import LogLinear
from ..core.score import row_index

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids Long[B, L], sigma_bar [B]) -> logits [B, L, V]


@dataclass
class MaskedModelConfig:
    """What ddlm reads of a model's config (``DDLMConfig``'s names), for a wrapped network: an absorbing diffusion
    model of ``vocab_size`` real tokens reading at most ``max_position_embeddings`` of them. network_config: the
    network's own configuration (a transformers config, or None)."""

    family: str
    vocab_size: int
    max_position_embeddings: int
    hidden_size: int = 0
    num_attention_heads: int = 0
    time_conditioning: bool = False
    network_config: object = None
    objective: str = "diffusion"
    process: str = "absorbing"
    num_classes: int = 0


class MaskedDiffusionModel(nn.Module):
    """A p(x0 | x_t) network as a ddlm score model: ``model(x_t, sigma_bar)`` -> log-scores [B, L, V + 1] (float32).

    network: an ``nn.Module`` called as ``network(ids, sigma_bar)`` -> logits [B, L', V] (any float dtype),
    ids Long[B, L'] in the network's vocabulary (the mask as ``mask_token_id``), sigma_bar [B] float32
    (a time-conditioned network reads it; others ignore it). ``ddlm.models.masked_lm`` adapts transformers masked LMs.
    vocab_size: V, the width of the network's logits. max_length: the longest x_t (prefix and suffix
    excluded). time_conditioned: the network reads sigma_bar (then samplers cannot reuse its outputs
    across steps). config: the network's configuration (its hidden_size and num_attention_heads size ddlm's
    default batches); ``model.config`` is a ``MaskedModelConfig`` holding it. family: a short name for
    messages ("masked-lm", "llada", ...).
    """

    accepts_positions = True  # rows are picked before the log-softmax; a network with accepts_rows computes only those

    def __init__(self, network: nn.Module, *, vocab_size: int, mask_token_id: int, max_length: int, banned_ids: Sequence[int] = (),
                 prefix_ids: Sequence[int] = (), suffix_ids: Sequence[int] = (), shift_logits: bool = False,
                 time_conditioned: bool = False, noise=None, config=None, family: str = "masked-lm"):
        super().__init__()
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the network's vocabulary of {vocab_size}")
        bad = [i for i in banned_ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"banned_ids {bad[:5]} lie outside the network's vocabulary [0, {vocab_size})")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1 after the fixed tokens, got {max_length}")
        self.network = network
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.max_length = max_length
        self.shift_logits = shift_logits
        self.time_conditioned = time_conditioned
        self.family = family
        self.config = MaskedModelConfig(family, vocab_size, max_length, getattr(config, "hidden_size", 0) or 0,
                                        getattr(config, "num_attention_heads", 0) or 0, time_conditioned, config)
        self.graph = Absorbing(vocab_size)
        self.noise = noise or LogLinear()
        banned = torch.zeros(vocab_size, dtype=torch.bool)
        banned[list(banned_ids)] = True
        banned[mask_token_id] = True
        self.register_buffer("banned", banned, persistent=False)
        self.register_buffer("prefix_ids", torch.tensor(list(prefix_ids), dtype=torch.long), persistent=False)
        self.register_buffer("suffix_ids", torch.tensor(list(suffix_ids), dtype=torch.long), persistent=False)

    @property
    def time_independent(self) -> bool:
        """The score-cache protocol (``ddlm.score_cache``): outputs depend on sigma_bar only through the closed-form shift."""
        return not self.time_conditioned

    @property
    def drawable(self) -> torch.Tensor:
        """Bool[V]: the token ids the model may produce."""
        return ~self.banned

    def network_ids(self, x_t: torch.Tensor) -> torch.Tensor:
        """ddlm states Long[B, L] -> the network's input Long[B, P + L + S] (mask state -> mask_token_id, fixed tokens added)."""
        ids = torch.where(x_t == self.vocab_size, self.mask_token_id, x_t)
        batch = ids.shape[0]
        parts = [self.prefix_ids.expand(batch, -1), ids, self.suffix_ids.expand(batch, -1)]
        return torch.cat([part.to(ids.device) for part in parts], dim=1)

    def forward(self, x_t: torch.Tensor, sigma_bar: torch.Tensor | float, positions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_t Long[B, L] in [0, V] (V the mask), sigma_bar [B] or a scalar -> log-scores [B, L, V + 1] float32;
        with ``positions`` (Bool[B, L] or flat Long[R]) only those rows, [R, V + 1] (``ddlm.score``).
        attention_mask: Bool[L, L] (True: position i attends to position j), handed to a network that declares
        ``accepts_attention_mask = True`` as ``network(ids, sigma_bar, attention_mask=...)``; None: the network's own
        pattern. Other networks, and models with fixed prefix / suffix tokens, refuse it (ValueError)."""
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2 or x_t.dtype != torch.long:
            raise TypeError(f"x_t must be a Long tensor [B, L], got {getattr(x_t, 'dtype', type(x_t).__name__)} "
                            f"{list(getattr(x_t, 'shape', []))}")
        batch, length = x_t.shape
        if length > self.max_length:
            raise ValueError(f"x_t has {length} positions but the {self.family} model reads at most {self.max_length}")
        if x_t.numel() and (int(x_t.min()) < 0 or int(x_t.max()) > self.vocab_size):
            raise ValueError(f"x_t holds ids outside [0, {self.vocab_size}] (the vocabulary and the mask state {self.vocab_size})")
        sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float32, device=x_t.device)
        sigma_bar = sigma_bar.expand(batch) if sigma_bar.dim() == 0 else sigma_bar.reshape(batch)
        ids = self.network_ids(x_t)
        extra = {} if attention_mask is None else {"attention_mask": self._check_attention_mask(attention_mask, length)}
        if positions is None:
            return self._log_scores(self.network(ids, sigma_bar, **extra), x_t, sigma_bar, None).view(batch, length, -1)
        rows = row_index(positions.to(x_t.device), (batch, length))
        if getattr(self.network, "accepts_rows", False) is True:  # the network computes the asked rows only
            picked = self.network(ids, sigma_bar, rows=self._sources(rows, length, ids.shape[1]), **extra)
            if tuple(picked.shape) != (rows.numel(), self.vocab_size):
                raise ValueError(f"the network returned logits of shape {list(picked.shape)} for {rows.numel()} rows; "
                                 f"expected [{rows.numel()}, {self.vocab_size}]")
            return self._log_scores(picked, x_t, sigma_bar, rows, gathered=True)
        return self._log_scores(self.network(ids, sigma_bar, **extra), x_t, sigma_bar, rows)

    def _check_attention_mask(self, attention_mask: torch.Tensor, length: int) -> torch.Tensor:
        """A Bool[L, L] attention pattern for a network that takes one (see ``forward``), else a ValueError."""
        if getattr(self.network, "accepts_attention_mask", False) is not True:
            raise ValueError(f"the {self.family} model's network does not take an attention_mask (it declares no "
                             "accepts_attention_mask = True)")
        if self.prefix_ids.numel() or self.suffix_ids.numel():
            raise ValueError(f"attention_mask is not supported for the {self.family} model: it adds fixed tokens around "
                             "every sequence")
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool or \
                tuple(attention_mask.shape) != (length, length):
            kind = getattr(attention_mask, "dtype", type(attention_mask).__name__)
            raise ValueError(f"attention_mask must be Bool[{length}, {length}] (True: position i attends to position j), got "
                             f"{kind} {list(getattr(attention_mask, 'shape', []))}")
        return attention_mask

    def save_pretrained(self, directory, state_dict: dict | None = None) -> None:
        """Write the model with its network's ``save_pretrained`` (``ddlm.models.adapted_causal``: the causal LM's layout);
        ``state_dict`` keys may carry this module's ``network.`` prefix. Networks without one: a ValueError."""
        save = getattr(self.network, "save_pretrained", None)
        if save is None:
            raise ValueError(f"saving a {self.family} model is not supported")
        if state_dict is not None and all(key.startswith("network.") for key in state_dict):  # this module's keys
            state_dict = {key.removeprefix("network."): value for key, value in state_dict.items()}
        save(directory, state_dict=state_dict)

    def _sources(self, rows: torch.Tensor, length: int, width: int) -> torch.Tensor:
        """Flat rows Long[R] of x_t ([B, L]) -> flat indices Long[R] into the network's [B, width] positions whose logits
        predict them: position start + i of the same sequence (shift_logits: start + i - 1, token 0 its own)."""
        token = rows % length
        return (rows // length) * width + self.prefix_ids.numel() + ((token - 1).clamp_min(0) if self.shift_logits else token)

    def _log_scores(self, logits: torch.Tensor, x_t: torch.Tensor, sigma_bar: torch.Tensor, rows: torch.Tensor | None,
                    gathered: bool = False) -> torch.Tensor:
        """The network's logits [B, P + L + S, V] -> log-scores [R, V + 1] float32 of x_t's rows (all B * L, or the flat
        ``rows``): what ``time_independent_log_scores`` computes from the network's logits, with one copy of the rows into a
        [R, V + 1] buffer (the mask column -inf, banned ids -inf) and one log-softmax, the rows picked before either.
        gathered: ``logits`` are already those rows' logits, [R, V] (from a network with ``accepts_rows``)."""
        batch, length = x_t.shape
        start, vocab = self.prefix_ids.numel(), self.vocab_size
        if gathered:
            ids = x_t.reshape(-1).index_select(0, rows)
        elif rows is None and not self.shift_logits and (batch == 1 or (start == 0 and logits.shape[1] == length)):
            logits = logits[:, start:start + length].reshape(batch * length, vocab)  # a view: no gather
            ids = x_t.reshape(-1)
        else:
            flat = torch.arange(batch * length, device=x_t.device) if rows is None else rows
            width = logits.shape[1]
            logits = logits.reshape(batch * width, vocab).index_select(0, self._sources(flat, length, width))
            ids = x_t.reshape(-1).index_select(0, flat)
        buffer = torch.empty((logits.shape[0], vocab + 1), dtype=torch.float32, device=logits.device)
        buffer[:, :vocab].copy_(logits)  # the network's dtype -> float32
        buffer[:, vocab] = float("-inf")  # the mask state's column
        buffer.index_fill_(1, self.banned.nonzero().squeeze(1), float("-inf"))
        out = torch.log_softmax(buffer, dim=-1)  # over the real tokens; banned ids and the mask column stay -inf
        del buffer
        # in place at inference; out of place when training (log_softmax keeps its output for the backward pass)
        inplace = not (torch.is_grad_enabled() and out.requires_grad)
        shift = torch.log(torch.expm1(sigma_bar.double().clamp_min(1e-30))).float()  # log(e^sigma_bar - 1) per sequence
        if bool(shift.ne(0).any()):  # 0 at sigma_bar = log 2, where samplers with a score cache ask
            per_row = (shift.repeat_interleave(length) if rows is None else shift[rows // length])[:, None]
            out = out.sub_(per_row) if inplace else out - per_row
        real = (ids != vocab).nonzero().squeeze(1)  # rows at a real token: every reverse rate 0, log s -inf but 0 at the token
        if real.numel():
            out = out.index_fill_(0, real, float("-inf")) if inplace else out.index_fill(0, real, float("-inf"))
        current = ids[:, None]  # 0 at the current token (the mask column of masked rows)
        return out.scatter_(-1, current, 0.0) if inplace else out.scatter(-1, current, 0.0)
