"""Exact oracles: a Gaussian mixture pushed through any linear SDE.

If x0 ~ sum_k w_k N(mu_k, C_k), then under x_t = alpha x0 + sigma eps

    p_t = sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I),

so the noised log-density, score, posterior mean E[x0 | x_t] and component responsibilities are
available in closed form at every t. Each covariance is diagonalised once, C_k = U_k diag(l_k) U_k^T,
which makes every noised covariance diagonal in the same basis (no per-call factorisation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import ScoreFn, batch_time, check_batched, check_positive_int, per_sample
from .sde import GaussianSDE

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """sum_k w_k N(mu_k, C_k) over events of any shape; parameters are stored in float64.

    Args:
        weights: [K] positive mixture weights (normalised to sum to 1).
        means: [K, *event] component means.
        stds: [K] isotropic or [K, *event] per-coordinate standard deviations, or
        covariances: [K, D, D] symmetric positive semi-definite matrices, D = prod(event).
    Give exactly one of ``stds`` and ``covariances``. Methods taking ``(x, t, sde)`` evaluate the
    mixture noised to time t by ``sde``; with ``t=None`` they evaluate the data distribution.
    """

    def __init__(self, weights, means, stds=None, covariances=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError(f"means must be shaped [K, *event], got shape {tuple(means.shape)}")
        num, self.event_shape = means.shape[0], tuple(means.shape[1:])
        self.dim = math.prod(self.event_shape)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (num,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {num} positive numbers (one per mean), got {weights.tolist()}")
        if (stds is None) == (covariances is None):
            raise ValueError("give exactly one of stds and covariances")
        if stds is not None:
            stds = torch.as_tensor(stds, dtype=torch.float64)
            if stds.shape == (num,):
                stds = stds[:, None].expand(num, self.dim)
            elif stds.shape == means.shape:
                stds = stds.reshape(num, self.dim)
            else:
                raise ValueError(
                    f"stds must be shaped [K] = [{num}] or like means {tuple(means.shape)}, got {tuple(stds.shape)}"
                )
            if not bool((stds >= 0).all()):
                raise ValueError("stds must be non-negative")
            self._eigvals, self._eigvecs = stds**2, None
        else:
            cov = torch.as_tensor(covariances, dtype=torch.float64)
            if cov.shape != (num, self.dim, self.dim):
                raise ValueError(
                    f"covariances must be shaped [K, D, D] = [{num}, {self.dim}, {self.dim}], got {tuple(cov.shape)}"
                )
            if not torch.allclose(cov, cov.transpose(1, 2)):
                raise ValueError("covariances must be symmetric")
            eigvals, self._eigvecs = torch.linalg.eigh(cov)
            if bool((eigvals < -1e-12 * eigvals.abs().amax(1, keepdim=True).clamp_min(1)).any()):
                raise ValueError("covariances must be positive semi-definite")
            self._eigvals = eigvals.clamp_min(0)
        self.weights = weights / weights.sum()
        self.means = means.reshape(num, self.dim)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def covariances(self) -> Tensor:
        """Component covariances [K, D, D] (float64)."""
        if self._eigvecs is None:
            return torch.diag_embed(self._eigvals)
        return self._eigvecs @ torch.diag_embed(self._eigvals) @ self._eigvecs.transpose(1, 2)

    # ---- internals on flattened events ----
    def _rotate_in(self, v: Tensor, vecs: Tensor | None) -> Tensor:  # [B, K, D] -> U_k^T v
        return v if vecs is None else torch.einsum("bkd,kde->bke", v, vecs)

    def _rotate_out(self, v: Tensor, vecs: Tensor | None) -> Tensor:  # [B, K, D] -> U_k v
        return v if vecs is None else torch.einsum("bke,kde->bkd", v, vecs)

    def _coefficients(self, x: Tensor, t, sde: GaussianSDE | None) -> tuple[Tensor, Tensor]:
        if t is None:
            return x.new_ones(()), x.new_zeros(())
        if sde is None:
            raise ValueError("sde is required when t is given")
        t = batch_time(t, x)
        flat = x.reshape(x.shape[0], 1, -1)
        return per_sample(sde.alpha(t), flat), per_sample(sde.sigma(t), flat)

    def _terms(self, x: Tensor, t, sde):
        """Rotated residuals y [B, K, D], variances [B, K, D], log p [B], log responsibilities [B, K], alpha, U."""
        check_batched(x)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must be shaped [B, *{self.event_shape}], got {tuple(x.shape)}")
        alpha, sigma = self._coefficients(x, t, sde)
        means, eigvals = self.means.to(x), self._eigvals.to(x)
        vecs = None if self._eigvecs is None else self._eigvecs.to(x)
        centred = x.reshape(x.shape[0], 1, self.dim) - alpha * means
        y = self._rotate_in(centred, vecs)
        var = alpha**2 * eigvals + sigma**2
        log_comp = -0.5 * (y**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        joint = torch.log(self.weights.to(x)) + log_comp
        log_p = torch.logsumexp(joint, dim=1)
        return y, var, log_p, joint - log_p[:, None], alpha, vecs

    # ---- public oracle ----
    def log_prob(self, x: Tensor, t=None, sde: GaussianSDE | None = None) -> Tensor:
        """log p_t(x) in nats, [B, *event] -> [B]."""
        return self._terms(x, t, sde)[2]

    def score(self, x: Tensor, t=None, sde: GaussianSDE | None = None) -> Tensor:
        """grad_x log p_t(x), shaped like x."""
        y, var, _, log_resp, _, vecs = self._terms(x, t, sde)
        resp = log_resp.exp()
        comp = self._rotate_out(-y / var, vecs)
        return (resp[..., None] * comp).sum(1).reshape(x.shape)

    def posterior_mean(self, x: Tensor, t, sde: GaussianSDE) -> Tensor:
        """E[x0 | x_t = x], shaped like x.

        Per component: mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^-1 (x - alpha mu_k), weighted by p(k | x_t).
        """
        y, var, _, log_resp, alpha, vecs = self._terms(x, t, sde)
        resp = log_resp.exp()
        comp = self.means.to(x) + self._rotate_out(alpha * self._eigvals.to(x) * y / var, vecs)
        return (resp[..., None] * comp).sum(1).reshape(x.shape)

    def responsibilities(self, x: Tensor, t=None, sde: GaussianSDE | None = None) -> Tensor:
        """Posterior component probabilities p(k | x_t = x), [B, K]."""
        return self._terms(x, t, sde)[3].exp()

    def log_responsibilities(self, x: Tensor, t=None, sde: GaussianSDE | None = None) -> Tensor:
        """log p(k | x_t = x), [B, K]: the exact noisy classifier over components (differentiable in x)."""
        return self._terms(x, t, sde)[3]

    def component(self, k: int) -> GaussianMixture:
        """Component k alone, N(mu_k, C_k), as a one-component mixture (the law p(x0 | c = k))."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_components:
            raise ValueError(f"k must be a component index in [0, {self.num_components}), got {k!r}")
        means = self.means[k : k + 1].reshape(1, *self.event_shape)
        return GaussianMixture([1.0], means, covariances=self.covariances()[k : k + 1])

    def condition(self, mask: Tensor, values: Tensor) -> GaussianMixture:
        """The law of x0 given its known coordinates, x0[mask] = values[mask], over the full event.

        ``mask`` (bool) and ``values`` are shaped like one event; True marks a known coordinate.
        With K the known and U the unknown coordinates, component k becomes
        N(mu_kU + C_kUK C_kKK^-1 (y - mu_kK), C_kUU - C_kUK C_kKK^-1 C_kKU) on U and the point y
        on K, with weight proportional to w_k N(y; mu_kK, C_kKK). Noised by an SDE, its score is the
        exact score of p_t(x_t | x0[mask] = y): sampling it with any sampler inpaints exactly.
        Components whose weight underflows to 0 are dropped. Needs every C_kKK positive definite.
        """
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor shaped like one event {self.event_shape}")
        if not isinstance(values, Tensor):
            raise TypeError(f"values must be a tensor shaped like one event {self.event_shape}")
        for name, tensor in (("mask", mask), ("values", values)):
            if tuple(tensor.shape) != self.event_shape:
                raise ValueError(f"{name} must be shaped like one event {self.event_shape}, got {tuple(tensor.shape)}")
        known = mask.reshape(-1).cpu()
        unknown = ~known
        y = values.reshape(-1).to(torch.float64).cpu()[known]
        cov = self.covariances()
        cov_kk = cov[:, known][:, :, known]
        cov_uk = cov[:, unknown][:, :, known]
        chol, info = torch.linalg.cholesky_ex(cov_kk)
        if bool((info != 0).any()):
            raise ValueError("the known coordinates' covariance of every component must be positive definite")
        residual = (y - self.means[:, known])[:, :, None]  # [K, m, 1]
        solved = torch.cholesky_solve(residual, chol)
        log_evidence = (
            -0.5 * (residual * solved).sum((1, 2))
            - torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
            - 0.5 * int(known.sum()) * math.log(2 * math.pi)
        )
        weights = torch.softmax(torch.log(self.weights) + log_evidence, 0)
        keep = weights > 0
        means = self.means.clone()
        means[:, known] = y
        means[:, unknown] = self.means[:, unknown] + (cov_uk @ solved)[:, :, 0]
        schur = cov[:, unknown][:, :, unknown] - cov_uk @ torch.cholesky_solve(cov_uk.transpose(1, 2), chol)
        new_cov = torch.zeros_like(cov)
        index = unknown.nonzero()[:, 0]
        new_cov[:, index[:, None], index[None, :]] = 0.5 * (schur + schur.transpose(1, 2))
        return GaussianMixture(
            weights[keep], means[keep].reshape(-1, *self.event_shape), covariances=new_cov[keep]
        )

    def score_fn(self, sde: GaussianSDE) -> ScoreFn:
        """The exact score as a sampler-ready callable ``(x [B, *event], t [B]) -> [B, *event]``."""
        return lambda x, t: self.score(x, t, sde)

    def moments(self, t=None, sde: GaussianSDE | None = None) -> tuple[Tensor, Tensor]:
        """Mean [*event] and covariance [D, D] of p_t (float64); ``t`` is a float or 0-d tensor."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = self.covariances() + self.means[:, :, None] * self.means[:, None, :]
        cov = (self.weights[:, None, None] * second).sum(0) - mean[:, None] * mean[None, :]
        if t is not None:
            if sde is None:
                raise ValueError("sde is required when t is given")
            tt = torch.as_tensor(t, dtype=torch.float64)
            if tt.ndim != 0:
                raise ValueError("moments takes a single time (float or 0-d tensor)")
            alpha, sigma = sde.alpha(tt), sde.sigma(tt)
            mean, cov = alpha * mean, alpha**2 * cov + sigma**2 * torch.eye(self.dim, dtype=torch.float64)
        return mean.reshape(self.event_shape), cov

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw n samples from the data distribution, [n, *event]."""
        n = check_positive_int(n, "n")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        offset = self._eigvals[comp].sqrt() * z
        if self._eigvecs is not None:
            offset = (self._eigvecs[comp] @ offset[:, :, None])[:, :, 0]
        x = self.means[comp] + offset
        return x.reshape(n, *self.event_shape).to(dtype=dtype, device=device)
