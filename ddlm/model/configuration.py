"""``DDLMConfig``: the ratio network's hyperparameters, its forward process and its noise schedule."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ..processes import Absorbing, Graph, Uniform
from ..schedules import Geometric, LogLinear

PROCESSES = ("absorbing", "uniform")
OBJECTIVES = ("diffusion", "ar")
SCHEDULES = ("loglinear", "geometric")

# Network sizes; every other field keeps its default (SEDD's small and medium settings).
PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, cond_dim=32, time_embed_dim=64),
    "small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}


class DDLMConfig(PreTrainedConfig):
    """A self-describing DiT-style ratio network: sizes, forward process and schedule.

    vocab_size: real tokens N (the tokenizer's vocabulary). The network has ``num_states``
    inputs and outputs: N for ``process="uniform"``, N + 1 for ``"absorbing"`` (mask id N).
    schedule: ``"loglinear"`` (with ``eps``) or ``"geometric"`` (with ``sigma_min``, ``sigma_max``).
    scale_by_sigma: the absorbing parametrisation log s = z - log(e^sigma_bar - 1) - log N
    (SEDD); None picks it for absorbing; uniform models cannot use it.
    max_position_embeddings: the longest sequence the model is meant for (rotary positions
    work at any length; pipelines refuse longer inputs).
    objective: ``"diffusion"`` (the ratio network, bidirectional attention) or ``"ar"`` (an
    autoregressive baseline on the same network: causal attention, next-token log-probabilities
    over ``num_states = vocab_size`` outputs, no mask state). An AR model has no forward process
    or schedule: ``process``, ``schedule``, ``eps``, ``sigma_min`` and ``sigma_max`` are ignored,
    ``scale_by_sigma`` must be False (None resolves to False), and ``graph()`` / ``noise()`` raise.
    """

    model_type = "ddlm"

    vocab_size: int = 50257
    process: str = "absorbing"
    schedule: str = "loglinear"
    eps: float = 1e-3
    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    cond_dim: int = 128
    time_embed_dim: int = 256
    mlp_ratio: int = 4
    dropout: float = 0.1
    max_position_embeddings: int = 1024
    rotary_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    scale_by_sigma: bool | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    objective: str = "diffusion"

    def __post_init__(self, **kwargs):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, got {self.process!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.objective == "ar":
            if self.scale_by_sigma:
                raise ValueError("scale_by_sigma is a diffusion parametrisation; an autoregressive model (objective='ar') "
                                 "cannot use it: leave it None or set it False")
            self.scale_by_sigma = False
        if self.scale_by_sigma is None:
            self.scale_by_sigma = self.process == "absorbing"
        if self.scale_by_sigma and self.process != "absorbing":
            raise ValueError("scale_by_sigma is the absorbing parametrisation; set it False for a uniform process")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must split into {self.num_attention_heads} heads of even size")
        if self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {self.time_embed_dim}")
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DDLMConfig":
        """A config of the named size (``tiny``, ``small`` = SEDD small 768x12, ``medium`` = 1024x24)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def num_states(self) -> int:
        """S: network inputs and outputs per position (log-scores, or next-token log-probs for AR)."""
        if self.objective == "ar":
            return self.vocab_size
        return self.vocab_size + (self.process == "absorbing")

    @property
    def is_autoregressive(self) -> bool:
        return self.objective == "ar"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def graph(self) -> Graph:
        """The forward process the model was trained for."""
        self._require_diffusion()
        return Absorbing(self.vocab_size) if self.process == "absorbing" else Uniform(self.vocab_size)

    def noise(self) -> LogLinear | Geometric:
        """The noise schedule the model was trained with."""
        self._require_diffusion()
        return LogLinear(self.eps) if self.schedule == "loglinear" else Geometric(self.sigma_min, self.sigma_max)

    def _require_diffusion(self) -> None:
        if self.objective == "ar":
            raise ValueError("an autoregressive model has no forward process (objective='ar'): "
                             "it has no graph() or noise schedule")
