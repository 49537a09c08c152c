"""Per-token continuous-time Markov chain forward processes ("graphs").

Convention (DESIGN.md §2): ``Q[x, y]`` is the rate of jumping from x to y; rows sum to 0, and
``p_{t|0}(. | x0)`` is row x0 of ``exp(sigma_bar(t) Q)``. Every method takes token tensors of any
leading shape ``[...]``; ``sigma_bar`` is a float or a tensor that broadcasts against them, and
per-state outputs are ``[..., S]`` in sigma_bar's floating dtype (float64 for Python floats).
Nothing but ``rate_matrix()`` builds an S x S matrix, so S can be a 50k vocabulary.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from .checks import is_int


def check_token_ids(x: torch.Tensor, num_ids: int | None, name: str = "x", owner: str = "the model has tokens") -> torch.Tensor:
    """Raise unless x is an integer tensor of ids in [0, num_ids) (any ids if num_ids is None); returns x.

    owner completes the range error, e.g. "Absorbing(4) has states" -> "... but Absorbing(4) has states 0..4".
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor of token ids, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got dtype {x.dtype}")
    if num_ids is not None and x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_ids):
        raise ValueError(f"{name} holds ids in [{int(x.min())}, {int(x.max())}], but {owner} 0..{num_ids - 1}")
    return x


def check_batch(x0: torch.Tensor, name: str = "x0") -> torch.Tensor:
    """Raise unless x0 is an integer tensor [B, L] with B, L >= 1 (ids unchecked); returns x0."""
    check_token_ids(x0, None, name)
    if x0.dim() != 2 or not x0.numel():
        raise ValueError(f"{name} must be Long[B, L] with B >= 1 sequences of L >= 1 tokens, got shape {list(x0.shape)}")
    return x0


def check_noise_level(sigma_bar, name: str = "sigma_bar") -> torch.Tensor:
    """sigma_bar as a floating tensor (float64 unless it is one already): a number or a tensor of
    finite values >= 0; a TypeError (bools, strings, integer tensors) or ValueError naming ``name`` otherwise."""
    if not isinstance(sigma_bar, torch.Tensor):
        if isinstance(sigma_bar, bool) or not isinstance(sigma_bar, (int, float, list, tuple)):
            raise TypeError(f"{name} must be a float or a floating tensor, got {type(sigma_bar).__name__}")
        try:
            sigma_bar = torch.tensor(sigma_bar, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a float or a floating tensor, got {sigma_bar!r:.80}") from None
    if not sigma_bar.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {sigma_bar.dtype}")
    valid = (sigma_bar >= 0) & (sigma_bar < math.inf)  # False at NaN
    if not bool(valid.all()):
        raise ValueError(f"{name} must be >= 0 and finite, got {sigma_bar[~valid].flatten()[0].item()}")
    return sigma_bar


class Graph(ABC):
    """A forward CTMC over ``num_states`` states, applied independently to every token."""

    num_tokens: int  # real (clean) tokens
    num_states: int
    mask_id: int | None = None  # a state that is noise only (Absorbing), else None

    # ----------------------------------------------------------------- validation helpers
    def check_tokens(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Raise unless x is an integer tensor of ids in [0, num_states)."""
        return check_token_ids(x, self.num_states, name, f"{self!r} has states")

    def check_clean(self, x0: torch.Tensor, name: str = "x0") -> torch.Tensor:
        """Raise unless x0 is valid clean data (overridden where some states are noise only)."""
        return self.check_tokens(x0, name)

    def check_sigma(self, sigma_bar, x: torch.Tensor, name: str = "sigma_bar") -> torch.Tensor:
        """Return sigma_bar (checked by ``check_noise_level``) broadcast to x's shape, or raise."""
        sigma = check_noise_level(sigma_bar, name)
        try:
            shape = torch.broadcast_shapes(sigma.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"{name} of shape {list(sigma.shape)} must broadcast against tokens of shape "
                f"{list(x.shape)} (for one value per sequence of x[B, L] pass sigma_bar[:, None])"
            )
        return sigma.to(x.device).expand(x.shape)

    # ----------------------------------------------------------------- the chain
    @abstractmethod
    def rate_matrix(self) -> torch.Tensor:
        """Dense generator Q [S, S], float64 (for tests and small S only)."""

    @abstractmethod
    def transition(self, x: torch.Tensor, sigma_bar) -> torch.Tensor:
        """Row x of exp(sigma_bar Q): p(y | start x) for every y, [..., S]."""

    @abstractmethod
    def transition_into(self, x: torch.Tensor, sigma_bar) -> torch.Tensor:
        """Column x of exp(sigma_bar Q): p(land at x | start y) for every y, [..., S]."""

    @abstractmethod
    def transition_prob(self, x0: torch.Tensor, x: torch.Tensor, sigma_bar) -> torch.Tensor:
        """p_{sigma_bar}(x | x0) elementwise, [...]."""

    @abstractmethod
    def rate_into(self, x: torch.Tensor) -> torch.Tensor:
        """Q[y, x] for every y != x and 0 at y = x, [..., S]: forward rates into x.

        These are the weights of denoising score entropy in the likelihood bound and the
        factor of the reverse rates R(x -> y) = sigma Q[y, x] s_y.
        """

    @abstractmethod
    def rate_into_value(self, x: torch.Tensor) -> torch.Tensor:
        """The common value of Q[y, x] over all y != x, [...] float64 (both processes have one)."""

    @abstractmethod
    def rate_from(self, x: torch.Tensor) -> torch.Tensor:
        """Q[x, y] for every y != x and 0 at y = x, [..., S]: forward rates out of x."""

    @abstractmethod
    def staggered_score(self, score: torch.Tensor, dsigma) -> torch.Tensor:
        """exp(-dsigma Q)^T s over the last axis: [..., S] -> [..., S] (dsigma broadcasts against [...])."""

    @abstractmethod
    def dse_coefficients(self, x_t: torch.Tensor, x0: torch.Tensor, sigma_bar):
        """Per-position scalars (w, a, b), each [...], that define denoising score entropy.

        The weight of every y != x_t is w, and the conditional ratio r_y is b at y = x0 (when
        x0 != x_t) and a at every other y != x_t. Rows with w = 0 carry no loss.
        """

    @abstractmethod
    def sample_transition(self, x: torch.Tensor, sigma_bar, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x_t ~ p_{sigma_bar}(. | x) per token; LongTensor shaped like x."""

    @abstractmethod
    def sample_limit(self, *shape: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Draw tokens from the limit distribution (sigma_bar -> infinity), LongTensor [*shape]."""

    @abstractmethod
    def prior(self, sigma_bar) -> torch.Tensor:
        """Default base distribution [..., S]: the sigma_bar-marginal of uniformly random clean tokens."""

    @abstractmethod
    def prior_kl(self, sigma_bar) -> torch.Tensor:
        """KL(p_{sigma_bar}(. | x0) || prior(sigma_bar)) per token, nats; the same for every clean x0."""

    # ----------------------------------------------------------------- derived quantities
    def ratio(self, x_t: torch.Tensor, x0: torch.Tensor, sigma_bar) -> torch.Tensor:
        """Conditional ratios r_y = p(y | x0) / p(x_t | x0) for every y, [..., S]."""
        self.check_tokens(x_t, "x_t")
        self.check_clean(x0)
        numerator = self.transition(x0, sigma_bar)
        return numerator / self.transition_prob(x0, x_t, sigma_bar).unsqueeze(-1)

    def reverse_rate(self, x: torch.Tensor, score: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Reverse rates R(x -> y) = sigma Q[y, x] s_y, 0 at y = x; score [..., S], sigma broadcasts against x."""
        return sigma.unsqueeze(-1) * self.rate_into(x).to(score.dtype) * score

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_tokens})"


def check_graph(graph) -> None:
    """TypeError unless ``graph`` is a forward process (a ``Graph``: Uniform, Absorbing)."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a forward process such as ddlm.Absorbing(N) or ddlm.Uniform(N), got {graph!r:.80}")


class Uniform(Graph):
    """Uniform(N): ``Q = (1/N) 1 1^T - I``; every token jumps to a uniformly random token."""

    def __init__(self, num_tokens: int):
        if not is_int(num_tokens, 2):
            raise ValueError(f"num_tokens must be an int >= 2, got {num_tokens!r}")
        self.num_tokens = num_tokens
        self.num_states = num_tokens

    def rate_matrix(self) -> torch.Tensor:
        n = self.num_tokens
        return torch.full((n, n), 1.0 / n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)

    def _other(self, sigma: torch.Tensor) -> torch.Tensor:
        """Probability of landing on one given token other than the start, [...]."""
        return -torch.expm1(-sigma) / self.num_tokens

    def transition(self, x, sigma_bar):
        self.check_tokens(x)
        sigma = self.check_sigma(sigma_bar, x)
        out = self._other(sigma).unsqueeze(-1).expand(*x.shape, self.num_states).clone()
        return out.scatter_add_(-1, x.unsqueeze(-1), torch.exp(-sigma).unsqueeze(-1))

    def transition_into(self, x, sigma_bar):
        return self.transition(x, sigma_bar)  # Q is symmetric

    def transition_prob(self, x0, x, sigma_bar):
        self.check_tokens(x0, "x0")
        self.check_tokens(x, "x")
        sigma = self.check_sigma(sigma_bar, x)
        other = self._other(sigma)
        return torch.where(x == x0, torch.exp(-sigma) + other, other)

    def rate_into(self, x):
        self.check_tokens(x)
        out = torch.full((*x.shape, self.num_states), 1.0 / self.num_tokens, dtype=torch.float64, device=x.device)
        return out.scatter_(-1, x.unsqueeze(-1), 0.0)

    def rate_into_value(self, x):
        return torch.full(x.shape, 1.0 / self.num_tokens, dtype=torch.float64, device=x.device)

    def rate_from(self, x):
        return self.rate_into(x)  # Q is symmetric

    def staggered_score(self, score, dsigma):
        dsigma = torch.as_tensor(dsigma, dtype=score.dtype, device=score.device).unsqueeze(-1)
        return torch.exp(dsigma) * score - torch.expm1(dsigma) * score.mean(-1, keepdim=True)

    def dse_coefficients(self, x_t, x0, sigma_bar):
        self.check_tokens(x_t, "x_t")
        self.check_clean(x0)
        sigma = self.check_sigma(sigma_bar, x_t)
        e = torch.expm1(sigma)
        same = x_t == x0
        rho = e / (e + self.num_tokens)  # p(other | x0) / p(x0 | x0)
        w = self.rate_into_value(x_t).to(sigma.dtype)
        a = torch.where(same, rho, torch.ones_like(rho))
        b = torch.where(same, rho, 1 + self.num_tokens / e)
        return w, a, b

    def sample_transition(self, x, sigma_bar, generator=None):
        self.check_tokens(x)
        sigma = self.check_sigma(sigma_bar, x)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=sigma.dtype)
        fresh = torch.randint(self.num_tokens, x.shape, generator=generator, device=x.device)
        return torch.where(u < -torch.expm1(-sigma), fresh, x)

    def sample_limit(self, *shape, generator=None, device=None):
        return torch.randint(self.num_tokens, shape, generator=generator, device=device)

    def prior(self, sigma_bar):
        sigma = check_noise_level(sigma_bar).double()
        return torch.full((*sigma.shape, self.num_states), 1.0 / self.num_tokens, dtype=sigma.dtype)

    def prior_kl(self, sigma_bar):
        sigma = check_noise_level(sigma_bar).double()
        n = self.num_tokens
        other = self._other(sigma)
        same = torch.exp(-sigma) + other
        return torch.xlogy(same, same * n) + (n - 1) * torch.xlogy(other, other * n)


class Absorbing(Graph):
    """Absorbing(N): N real tokens plus the mask (id N); each real token jumps to the mask at rate 1."""

    def __init__(self, num_tokens: int):
        if not is_int(num_tokens, 1):
            raise ValueError(f"num_tokens must be an int >= 1, got {num_tokens!r}")
        self.num_tokens = num_tokens
        self.num_states = num_tokens + 1
        self.mask_id = num_tokens

    def check_clean(self, x0, name="x0"):
        self.check_tokens(x0, name)
        if x0.numel() and bool(torch.any(x0 == self.mask_id)):
            raise ValueError(f"{name} holds the mask id {self.mask_id}; clean data must be real tokens < {self.mask_id}")
        return x0

    def rate_matrix(self) -> torch.Tensor:
        n = self.num_tokens
        q = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        q[:n, n] = 1.0
        q[range(n), range(n)] = -1.0
        return q

    def transition(self, x, sigma_bar):
        self.check_tokens(x)
        sigma = self.check_sigma(sigma_bar, x)
        out = torch.zeros(*x.shape, self.num_states, dtype=sigma.dtype, device=x.device)
        out.scatter_add_(-1, x.unsqueeze(-1), torch.exp(-sigma).unsqueeze(-1))
        out[..., self.mask_id] += -torch.expm1(-sigma)  # the mask row sums to 1 at the mask
        return out

    def transition_into(self, x, sigma_bar):
        self.check_tokens(x)
        sigma = self.check_sigma(sigma_bar, x)
        is_mask = x == self.mask_id
        from_real = torch.where(is_mask, -torch.expm1(-sigma), torch.zeros_like(sigma))
        out = from_real.unsqueeze(-1).expand(*x.shape, self.num_states).clone()
        stay = torch.where(is_mask, torch.ones_like(sigma), torch.exp(-sigma))
        return out.scatter_(-1, x.unsqueeze(-1), stay.unsqueeze(-1))

    def transition_prob(self, x0, x, sigma_bar):
        self.check_tokens(x0, "x0")
        self.check_tokens(x, "x")
        sigma = self.check_sigma(sigma_bar, x)
        zero = torch.zeros_like(sigma)
        to_mask = torch.where(x0 == self.mask_id, torch.ones_like(sigma), -torch.expm1(-sigma))
        stay_real = torch.where(x == x0, torch.exp(-sigma), zero)
        return torch.where(x == self.mask_id, to_mask, stay_real)

    def rate_into(self, x):
        self.check_tokens(x)
        out = (x == self.mask_id).to(torch.float64).unsqueeze(-1).expand(*x.shape, self.num_states).clone()
        out[..., self.mask_id] = 0.0
        return out

    def rate_into_value(self, x):
        return (x == self.mask_id).to(torch.float64)

    def rate_from(self, x):
        self.check_tokens(x)
        out = torch.zeros(*x.shape, self.num_states, dtype=torch.float64, device=x.device)
        out[..., self.mask_id] = (x != self.mask_id).to(torch.float64)
        return out

    def staggered_score(self, score, dsigma):
        dsigma = torch.as_tensor(dsigma, dtype=score.dtype, device=score.device).unsqueeze(-1)
        real = score[..., : self.mask_id]
        mask = score[..., self.mask_id :] - torch.expm1(dsigma) * real.sum(-1, keepdim=True)
        return torch.cat([torch.exp(dsigma) * real, mask], dim=-1)

    def dse_coefficients(self, x_t, x0, sigma_bar):
        self.check_tokens(x_t, "x_t")
        self.check_clean(x0)
        sigma = self.check_sigma(sigma_bar, x_t)
        w = self.rate_into_value(x_t).to(sigma.dtype)
        return w, torch.zeros_like(sigma), 1 / torch.expm1(sigma)

    def sample_transition(self, x, sigma_bar, generator=None):
        self.check_tokens(x)
        sigma = self.check_sigma(sigma_bar, x)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=sigma.dtype)
        return torch.where(u < -torch.expm1(-sigma), torch.full_like(x, self.mask_id), x)

    def sample_limit(self, *shape, generator=None, device=None):
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def prior(self, sigma_bar):
        sigma = check_noise_level(sigma_bar).double()
        keep = torch.exp(-sigma).unsqueeze(-1)
        real = (keep / self.num_tokens).expand(*sigma.shape, self.num_tokens)
        return torch.cat([real, 1 - keep], dim=-1)

    def prior_kl(self, sigma_bar):
        sigma = check_noise_level(sigma_bar).double()
        return torch.exp(-sigma) * math.log(self.num_tokens)
