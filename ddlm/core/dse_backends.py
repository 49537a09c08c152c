"""Denoising score entropy per row, with interchangeable backends.

For one position (row) with current token x, clean token x0 and log-scores s [V] (plus the
optional per-row ``shift``), DSE reduces to a few float64 scalars (``Graph.dse_coefficients``)
and one sum over R = {y != x, y != x0} of non-negative terms:

    DSE = w [ sum_{y in R} B_y ] + w [x0 != x] b phi(s_x0 - log b),    phi(u) = expm1(u) - u >= 0
    B_y = a phi(u_y), u_y = s_y - log a   (a > 0: Uniform)
    B_y = e^{s_y}                         (a = 0: Absorbing, where every y in R has ratio 0)

This is s_y - a s_y + K(a) with K(a) = a (log a - 1) rewritten so that no two large terms
cancel: each B_y is computed to about 2e-7 relative (float32; 1e-15 in float64) from u_y, and the
row is a sum of non-negative terms, so the loss is >= 0 and keeps that relative accuracy at the
optimum (s = r, where every term is O(a v^2)) as well as far from it. The gradient is
w a expm1(u_y) on R (w e^{s_y} where a = 0), w b expm1(s_x0 - log b) at x0 (float64) and 0 at x.

How u is formed: with c = log a - shift (float64 per row; log a := 0 where a = 0) split into
hi = float(c) and lo = float(c - hi) in the compute dtype, u = (log_score - hi) - lo. Near the
optimum the first subtraction is exact (Sterbenz), so u carries one rounding and its small value
survives. For small |u|, phi(u) is the Taylor polynomial u^2 sum_{k<=K} u^k / (k + 2)!, else
expm1(u) - u: |u| < 1/2 with K = 6 in the torch backend's float32 (torch's expm1 is accurate),
|u| < 1 with K = 9 in the eager backend and the Triton kernel, |u| < 1 with K = 16 in float64.
Far from the optimum (|u| >> 1) the rounding of u itself limits each term to about |u| * 6e-8
relative, as it limits e^s. Where u > 80 (a e^u representable, e^u not) a e^u is e^{u + log a}
(the torch backend redoes such rows in float64).

Measured (tests/test_losses.py, float32 log-scores log r + delta with delta 0, ~1e-4..1e-2 and ~2,
sigma_bar 1e-4..10, N 5..1000, with and without shift): every row within 1e-5 relative of the
same loss on the float64 log-scores, >= 0, and exactly 0 where the float64 value is 0.

Backends compute the row sum of B and the gradient rows:

- ``eager``: whole-tensor PyTorch ops under autograd (the reference; several [N, V] temporaries);
- ``torch``: chunks of rows inside a custom autograd function, so no [N, V] temporary exists
  beyond the log-scores and their gradient; rows with w = 0 are skipped;
- ``triton``: one kernel program per row, one pass over V (``ddlm.kernels.score_entropy``); runs
  on CUDA, or on CPU under ``TRITON_INTERPRET=1``. It has no expm1 (the interpreter lacks
  libdevice), so it uses exp(u) - 1 for |u| >= 1 and the polynomial below.

When a gradient is needed it is computed in the forward pass, in the same read of the
log-scores (optionally in place, over the log-scores); forward-only use (the likelihood bound)
writes nothing of size [N, V].
"""

from __future__ import annotations

import math
import os

import torch

from .dse_numerics import BIG_U, SMALL_U, split_offset

IMPLS = ("auto", "eager", "torch", "triton")
CHUNK_ELEMENTS = 1 << 22  # log-scores per chunk of the torch backend (CHUNK_ELEMENTS // V rows)


def taylor_degree(dtype: torch.dtype) -> int:
    """K of the polynomial P(u) = sum_{k <= K} u^k / (k + 2)! (phi(u) = u^2 P(u)) for |u| < SMALL_U."""
    return 16 if dtype == torch.float64 else 9


def phi_polynomial(u: torch.Tensor, degree: int) -> torch.Tensor:
    """P(u) = sum_{k=0}^{degree} u^k / (k + 2)!, by Horner (a new tensor)."""
    p = u * (1 / math.factorial(degree + 2)) + 1 / math.factorial(degree + 1)
    for k in range(degree - 2, -1, -1):
        p.mul_(u).add_(1 / math.factorial(k + 2))
    return p


def bregman(log_s: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """s - r log s + K(r), elementwise, as r (expm1(v) - v) with v = log s - log r; s where r = 0."""
    positive = ratio > 0
    log_r = torch.log(torch.where(positive, ratio, torch.ones_like(ratio)))
    v = log_s - log_r
    return torch.where(positive, ratio * (torch.expm1(v) - v), torch.exp(log_s))


def dse_from_row_sum(sum_b, log_s_x0, x_t, x0, w, b):
    """DSE per row [N] (float64) from the sum of B over R and the (float64) log-score at x0, all [N]."""
    special = x0 != x_t
    x0_term = bregman(log_s_x0, b)
    total = sum_b + torch.where(special, x0_term, torch.zeros_like(x0_term))
    return torch.where(w > 0, w * total, torch.zeros_like(total))


def excluded_states(x_t: torch.Tensor, x0: torch.Tensor, num_states: int) -> torch.Tensor:
    """Bool [..., V]: True at x_t and, where x0 != x_t, at x0 (the states outside R)."""
    states = torch.arange(num_states, device=x_t.device)
    return (states == x_t.unsqueeze(-1)) | ((states == x0.unsqueeze(-1)) & (x0 != x_t).unsqueeze(-1))


def triton_available(device: torch.device) -> bool:
    """True where the Triton kernels can run: CUDA tensors, or any tensor under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_impl(impl: str, device: torch.device) -> str:
    """The backend to use: ``auto`` reads DDLM_DSE_IMPL, else Triton on CUDA and the torch chunks elsewhere."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = os.environ.get("DDLM_DSE_IMPL", "auto")
        if impl not in IMPLS:
            raise ValueError(f"DDLM_DSE_IMPL must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if impl == "triton" and not triton_available(device):
        raise RuntimeError(
            f"impl='triton' needs Triton installed (pip install 'ddlm[triton]') and a CUDA tensor, or "
            f"TRITON_INTERPRET=1 for the CPU interpreter; got a tensor on {device}"
        )
    return impl


# --------------------------------------------------------------------------- eager
def eager_dse(log_score, x_t, x0, shift, w, a, b):
    """DSE per position [...] (float64) with whole-tensor ops under autograd; log_score [..., V]."""
    dtype = torch.promote_types(log_score.dtype, torch.float32)
    hi, lo, log_a = (t.unsqueeze(-1) for t in split_offset(a, shift, dtype))
    u = (log_score.to(dtype) - hi) - lo
    excluded = excluded_states(x_t, x0, log_score.shape[-1])
    positive = (a > 0).unsqueeze(-1)
    sum_b = torch.zeros(u.shape[:-1], dtype=dtype, device=u.device)
    if bool(positive.any()):  # a > 0: a phi(u), every branch finite where it is not selected (autograd-safe)
        a_ = a.to(dtype).unsqueeze(-1)
        u_pos = torch.where(excluded | ~positive, torch.zeros_like(u), u)
        small = u_pos.abs() < SMALL_U
        clipped = u_pos.clamp(-SMALL_U, SMALL_U)
        moderate = u_pos.clamp(max=BIG_U)
        phi = torch.where(small, clipped * clipped * phi_polynomial(clipped, taylor_degree(dtype)), torch.expm1(moderate) - moderate)
        large = u_pos.clamp(min=BIG_U)
        huge = torch.exp(large + log_a) - a_ * (1 + large)  # a phi(u) where u > BIG_U
        sum_b = sum_b + torch.where(u_pos > BIG_U, huge, a_ * phi).sum(-1)
    if not bool(positive.all()):  # a = 0: e^s
        sum_b = sum_b + torch.exp(torch.where(excluded | positive, torch.full_like(u, float("-inf")), u)).sum(-1)
    sum_b = sum_b.double()
    log_s_x0 = log_score.gather(-1, x0.unsqueeze(-1)).squeeze(-1).double() + shift
    return dse_from_row_sum(sum_b, log_s_x0, x_t, x0, w, b)


# --------------------------------------------------------------------------- torch chunks
def _chunk_terms(s, hi, lo, a, outside, grad_scale):
    """Sum of B over R per row [n] (float64) for a chunk of rows with a > 0, and the gradient rows.

    s [n, V] is a fresh copy of the log-scores (overwritten); hi, lo, a [n] in its dtype; outside
    [n, 2] the states not in R. Returns (sums, grad) with grad = grad_scale a expm1(u) (0 outside
    R) or None when grad_scale is None.
    """
    u = s.sub_(hi[:, None]).sub_(lo[:, None]).scatter_(1, outside, 0.0)
    em = torch.expm1(u)
    phi = em - u
    # torch has an accurate expm1, so float32 needs the polynomial only for |u| < 1/2 (K = 6; both sides ~2e-7)
    small_u, degree = (SMALL_U, taylor_degree(u.dtype)) if u.dtype == torch.float64 else (0.5, 6)
    clipped = u.clamp(-small_u, small_u)
    poly = phi_polynomial(clipped, degree).mul_(clipped).mul_(clipped)
    phi.lerp_(poly, (u.abs() < small_u).to(u.dtype))  # a blend with weight 0 or 1: poly where |u| < small_u
    sums = phi.sum(1).double()
    grad = None if grad_scale is None else em.mul_(grad_scale[:, None])
    return sums, grad


def torch_rows(log_score, x_t, x0, shift, w, a, grad=None):
    """Sum of B over R per row, [N] float64 (0 where w = 0); see the module docstring.

    If ``grad`` [N, V] is given (it may be log_score itself), its rows are overwritten with
    w a expm1(u) (w e^s where a = 0) at every y in R and 0 at x_t (0 on rows with w = 0); the
    x0 entry (where x0 != x_t) is left for the caller, which writes it in float64.
    """
    dtype = torch.promote_types(log_score.dtype, torch.float32)
    n, v = log_score.shape
    sum_b = torch.zeros(n, dtype=torch.float64, device=log_score.device)
    live = w != 0
    if grad is not None:
        grad[~live] = 0
    hi, lo, _ = split_offset(a, shift, dtype)
    scale = (w * a).to(dtype)
    for positive in (True, False):
        group = torch.nonzero(live & ((a > 0) == positive)).squeeze(1)
        for rows in group.split(max(1, CHUNK_ELEMENTS // v)):
            outside = torch.stack([x_t[rows], x0[rows]], 1)  # x_t, and x0 (x_t again where x0 = x_t): the states not in R
            s = log_score[rows].to(dtype)
            if positive:
                sums, g = _chunk_terms(s, hi[rows], lo[rows], a[rows].to(dtype), outside, None if grad is None else scale[rows])
                sum_b[rows] = a[rows] * sums
                over = torch.nonzero(~torch.isfinite(sums)).squeeze(1)
                if over.numel():  # u > 88 somewhere: e^u overflows in float32, a e^u may not; redo those rows in float64
                    r = rows[over]
                    g64 = None if grad is None else (w[r] * a[r])
                    sums64, g_over = _chunk_terms(log_score[r].double(), *split_offset(a[r], shift[r], torch.float64)[:2],
                                                  a[r], outside[over], g64)
                    sum_b[r] = a[r] * sums64
                    if g is not None:
                        g[over] = g_over.to(dtype)
            else:  # a = 0: B = e^s
                g = torch.exp(s.sub_(hi[rows, None]).sub_(lo[rows, None]).scatter_(1, outside, float("-inf")))
                sum_b[rows] = g.sum(1).double()
                g.mul_(w[rows, None].to(dtype))
            if grad is not None:
                grad[rows] = g.to(grad.dtype)
    return sum_b


# --------------------------------------------------------------------------- autograd
def _rows_fn(impl):
    if impl == "triton":
        from ..kernels.score_entropy import triton_rows

        return triton_rows
    return torch_rows


def _x0_gradient(log_s_x0, w, b):
    """w b expm1(s_x0 - log b) in float64: the gradient at x0, free of the e^s - b cancellation."""
    return w * b * torch.expm1(log_s_x0 - torch.log(b))


class RowDSE(torch.autograd.Function):
    """DSE per row of log_score [N, V] through the ``torch`` or ``triton`` backend; float64 [N].

    When log_score needs a gradient it is computed in the forward pass (one read of the
    log-scores) and scaled by the upstream gradient in backward, which therefore runs once. With
    ``inplace`` it overwrites log_score, so the loss adds no [N, V] memory at all; the log-scores
    are then destroyed (use it when nothing else reads them, as in training).
    """

    @staticmethod
    def forward(ctx, log_score, x_t, x0, shift, w, a, b, impl, inplace):
        log_score = log_score.detach()
        log_s_x0 = log_score.gather(1, x0[:, None]).squeeze(1).double() + shift  # before any overwrite
        grad = None
        if ctx.needs_input_grad[0]:
            grad = log_score if inplace else torch.empty_like(log_score)
        sum_b = _rows_fn(impl)(log_score, x_t, x0, shift, w, a, grad)
        if grad is not None:
            rows = torch.nonzero((x0 != x_t) & (w > 0)).squeeze(1)
            grad[rows, x0[rows]] = _x0_gradient(log_s_x0[rows], w[rows], b[rows]).to(grad.dtype)
            ctx.save_for_backward(grad)
        ctx.backward_done = False
        return dse_from_row_sum(sum_b, log_s_x0, x_t, x0, w, b)

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.backward_done:
            raise RuntimeError("the fused score-entropy loss scales its stored gradient in place: backward can run once")
        ctx.backward_done = True
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_loss[:, None].to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None


class LinearDSE(torch.autograd.Function):
    """DSE per row of ``hidden @ weight.T + bias`` without storing the [N, V] logits; float64 [N].

    Rows are processed in chunks of ``chunk`` (only rows with w > 0): forward keeps the row sums,
    backward recomputes each chunk's logits, writes the scaled gradient over them and turns it
    into the gradients of hidden, weight and bias (accumulated in at least float32). Peak extra memory is
    one chunk of logits plus a float32 copy of weight's gradient. Under autocast (``train.mixed_precision``) backward
    recomputes the logits and forms the gradients in the forward's precision (bf16 matmuls, as autocast's own backward
    would), not in float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, x_t, x0, shift, w, a, b, impl, chunk):
        rows_fn = _rows_fn(impl)
        live = torch.nonzero(w > 0).squeeze(1)
        sum_b = torch.zeros(hidden.shape[0], dtype=torch.float64, device=hidden.device)
        log_s_x0 = shift.clone()
        for rows in live.split(chunk):
            logits = torch.nn.functional.linear(hidden[rows], weight, bias)
            sum_b[rows] = rows_fn(logits, x_t[rows], x0[rows], shift[rows], w[rows], a[rows])
            log_s_x0[rows] += logits.gather(1, x0[rows, None]).squeeze(1).double()
        ctx.save_for_backward(hidden, weight, bias, x_t, x0, shift, w, a, b, live, log_s_x0)
        ctx.impl, ctx.chunk = impl, chunk
        device = hidden.device.type
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        return dse_from_row_sum(sum_b, log_s_x0, x_t, x0, w, b)

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, x_t, x0, shift, w, a, b, live, log_s_x0 = ctx.saved_tensors
        rows_fn = _rows_fn(ctx.impl)
        scale = w * grad_loss.double()
        grad_hidden = torch.zeros_like(hidden)
        acc = torch.promote_types(weight.dtype, torch.float32)  # float32 (or wider) accumulation
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=acc, device=bias.device)
        autocast, low = ctx.autocast
        with torch.autocast(hidden.device.type, dtype=low, enabled=autocast):  # backward runs outside the forward's autocast
            for rows in live.split(ctx.chunk):
                logits = torch.nn.functional.linear(hidden[rows], weight, bias)
                rows_fn(logits, x_t[rows], x0[rows], shift[rows], scale[rows], a[rows], logits)  # gradient over the logits
                special = torch.nonzero(x0[rows] != x_t[rows]).squeeze(1)
                r = rows[special]
                logits[special, x0[r]] = _x0_gradient(log_s_x0[r], scale[r], b[r]).to(logits.dtype)
                grad_hidden[rows] = (logits @ weight).to(grad_hidden.dtype)
                if autocast:  # a low-precision matmul (in-place addmm_ is not autocast), summed in float32
                    grad_weight += (logits.t() @ hidden[rows]).to(acc)
                else:
                    grad_weight.addmm_(logits.t().to(acc), hidden[rows].to(acc))
                if grad_bias is not None:
                    grad_bias += logits.to(acc).sum(0)
        return (
            grad_hidden,
            grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None, None, None, None, None, None, None, None,
        )
