"""``DDLMConfig``: the ratio network's hyperparameters, its forward process and its noise schedule."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ..core.checks import is_int, is_number
from ..core.processes import Absorbing, Graph, Uniform
from ..core.schedules import Geometric, LogLinear

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
    time_conditioning: True (default; SEDD) feeds sigma_bar to the network through the time
    embedding. False (absorbing diffusion only, RADD-style) builds a time-independent network: it
    never reads sigma_bar, its adaLN conditioning vector is one learned constant (so every shift,
    scale and gate is a learned per-layer constant), and it predicts p(x0_i = y | x_t) over the
    N real tokens; the log-scores follow analytically, log s_y = log p(y | x_t) - log(e^sigma_bar - 1)
    at masked positions (see ``DDLMForDiffusion``). It replaces scale_by_sigma (None resolves to
    False; True is refused). Configs saved without the key load as True.
    predict_x0: the head predicts p(x0_i = y | x_t) over the N real tokens and the absorbing
    log-scores follow from it as above (MDLM's SUBS parameterisation). None resolves to
    ``not time_conditioning``: a time-independent model always does; True with time_conditioning=True
    is a time-conditioned x0 predictor (MDLM trained with time conditioning). Absorbing diffusion only;
    it replaces scale_by_sigma. Configs saved without the key load as None, so resolve as before.
    num_classes: 0 (default) for an unconditional network; K > 0 for a class-conditional one with a
    table of K + 1 learned class embeddings [cond_dim], class ids 0..K-1 and the null class K (the
    label dropped during training, and the unconditional score for classifier-free guidance). The
    class embedding is added to the adaLN conditioning vector (to the time embedding, as DiT does,
    or to the learned constant of a time-independent model). Autoregressive models accept it too
    (the class then conditions every next-token prediction). Configs saved without the key load as 0.
    shift_logits: the head's output for token i is read from position i - 1's hidden state (token 0
    from its own), so a model adapted from an autoregressive one keeps its next-token head unchanged
    (Dream's parameterisation; ``ddlm.training.adapt``). Diffusion models only; configs saved without
    the key load as False.
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
    time_conditioning: bool = True
    predict_x0: bool | None = None
    num_classes: int = 0
    shift_logits: bool = False

    def __post_init__(self, **kwargs):
        self._validate()
        if self.objective == "ar":
            if self.scale_by_sigma:
                raise ValueError("scale_by_sigma is a diffusion parametrisation; an autoregressive model (objective='ar') "
                                 "cannot use it: leave it None or set it False")
            self.scale_by_sigma = False
            if self.shift_logits:
                raise ValueError("shift_logits is a diffusion parameterisation; an autoregressive model (objective='ar') "
                                 "already predicts the next token at every position")
        if not self.time_conditioning:
            if self.objective == "ar" or self.process != "absorbing":
                what = "objective='ar'" if self.objective == "ar" else f"process={self.process!r}"
                raise ValueError(f"time_conditioning=False (a time-independent network predicting p(x0 | x_t)) needs "
                                 f"process='absorbing' and objective='diffusion', got {what}; allowed: time_conditioning=True "
                                 "for any process, False for absorbing diffusion only")
            if self.scale_by_sigma:
                raise ValueError("scale_by_sigma=True and time_conditioning=False are two parametrisations of the absorbing "
                                 "scores; a time-independent model uses its own (leave scale_by_sigma None or False)")
            self.scale_by_sigma = False
        self._resolve_predict_x0()
        if self.scale_by_sigma is None:
            self.scale_by_sigma = self.process == "absorbing"
        if self.scale_by_sigma and self.process != "absorbing":
            raise ValueError("scale_by_sigma is the absorbing parametrisation; set it False for a uniform process")
        super().__post_init__(**kwargs)

    def _resolve_predict_x0(self) -> None:
        """predict_x0 None -> ``not time_conditioning``; a time-conditioned x0 predictor needs absorbing diffusion."""
        if self.predict_x0 is None:
            self.predict_x0 = not self.time_conditioning
        if not self.predict_x0 and not self.time_conditioning:
            raise ValueError("predict_x0=False with time_conditioning=False: a time-independent model predicts p(x0 | x_t); "
                             "leave predict_x0 None or True")
        if self.predict_x0 and self.time_conditioning:
            if self.objective == "ar" or self.process != "absorbing":
                what = "objective='ar'" if self.objective == "ar" else f"process={self.process!r}"
                raise ValueError(f"predict_x0=True needs process='absorbing' and objective='diffusion', got {what}")
            if self.scale_by_sigma:
                raise ValueError("scale_by_sigma=True and predict_x0=True are two parametrisations of the absorbing scores; "
                                 "leave scale_by_sigma None or False")
            self.scale_by_sigma = False

    def _validate(self) -> None:
        """ValueError naming the first field of the wrong kind or out of range (before anything uses them)."""
        for name, choices in (("objective", OBJECTIVES), ("process", PROCESSES), ("schedule", SCHEDULES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        minimum = {"vocab_size": 2, "hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1, "cond_dim": 1,
                   "time_embed_dim": 2, "mlp_ratio": 1, "max_position_embeddings": 1, "num_classes": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not is_int(value, low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("eps", "sigma_min", "sigma_max", "dropout", "rotary_base", "layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not is_number(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        ranges = {"eps": (0 < self.eps < 1, "in (0, 1)"), "sigma_min": (0 < self.sigma_min < self.sigma_max, "in (0, sigma_max)"),
                  "dropout": (0 <= self.dropout < 1, "in [0, 1)"), "rotary_base": (self.rotary_base > 1, "> 1"),
                  "layer_norm_eps": (self.layer_norm_eps > 0, "> 0"), "initializer_range": (self.initializer_range >= 0, ">= 0")}
        for name, (ok, need) in ranges.items():
            if not ok:
                extra = f" (sigma_max={self.sigma_max!r})" if name == "sigma_min" else ""
                raise ValueError(f"{name} must be {need}, got {getattr(self, name)!r}{extra}")
        for name in ("scale_by_sigma", "tie_word_embeddings", "time_conditioning", "predict_x0", "shift_logits"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name in ("scale_by_sigma", "predict_x0"))):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must split into num_attention_heads={self.num_attention_heads} "
                             "heads of even size")
        if self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {self.time_embed_dim}")

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
    def null_class(self) -> int | None:
        """The class id of "no label" (``num_classes``) of a class-conditional model; None for an unconditional one."""
        return self.num_classes if self.num_classes else None

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
