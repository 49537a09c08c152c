"""Denoising score entropy from per-row sums, with interchangeable backends.

For one position (row) with current token x, clean token x0 and log-scores s [V], DSE needs
only two sums over the vocabulary and a few float64 scalars (``Graph.dse_coefficients``):

    DSE = w [ sum_{y in R} e^{s_y} - a sum_{y in R} s_y + |R| K(a) ] + w [x0 != x] b (expm1(v) - v)

with R = {y != x, y != x0}, v = s_x0 - log b and K(a) = a (log a - 1). The gradient is
w (e^{s_y} - a) on R, w b expm1(v) at x0 (when x0 != x) and 0 at x.

Backends compute the sums and the gradient rows:

- ``eager``: whole-tensor PyTorch ops under autograd (the reference; several [N, V] temporaries);
- ``torch``: chunks of rows inside a custom autograd function, so no [N, V] temporary exists
  beyond the log-scores and their gradient; rows with w = 0 are skipped;
- ``triton``: one kernel program per row, one pass over V (``ddlm.kernels.score_entropy``); runs
  on CUDA, or on CPU under ``TRITON_INTERPRET=1``.

When a gradient is needed it is computed in the forward pass, in the same read of the
log-scores (optionally in place, over the log-scores); forward-only use (the likelihood bound)
writes nothing of size [N, V].
"""

from __future__ import annotations

import os

import torch

IMPLS = ("auto", "eager", "torch", "triton")
CHUNK_ELEMENTS = 1 << 22  # log-scores per chunk of the torch backend (CHUNK_ELEMENTS // V rows)


def bregman(log_s: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """s - r log s + K(r), elementwise, as r (expm1(v) - v) with v = log s - log r; s where r = 0."""
    positive = ratio > 0
    log_r = torch.log(torch.where(positive, ratio, torch.ones_like(ratio)))
    v = log_s - log_r
    return torch.where(positive, ratio * (torch.expm1(v) - v), torch.exp(log_s))


def dse_from_row_sums(sum_exp, sum_log, log_s_x0, x_t, x0, w, a, b, num_states):
    """DSE per row [N] (float64) from the sums over R and the log-score at x0, all [N]."""
    special = x0 != x_t
    count = (num_states - 1) - special.double()
    k_a = torch.xlogy(a, a) - a
    rest = sum_exp + torch.where(a != 0, count * k_a - a * sum_log, torch.zeros_like(a))
    x0_term = bregman(log_s_x0, b)
    total = rest + torch.where(special, x0_term, torch.zeros_like(x0_term))
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
    log_s = log_score.to(dtype) + shift.unsqueeze(-1).to(dtype)
    excluded = excluded_states(x_t, x0, log_score.shape[-1])
    sum_exp = torch.exp(log_s.masked_fill(excluded, float("-inf"))).sum(-1).double()
    sum_log = log_s.masked_fill(excluded, 0.0).sum(-1).double()
    log_s_x0 = log_s.gather(-1, x0.unsqueeze(-1)).squeeze(-1).double()
    return dse_from_row_sums(sum_exp, sum_log, log_s_x0, x_t, x0, w, a, b, log_score.shape[-1])


# --------------------------------------------------------------------------- torch chunks
def torch_rows(log_score, x_t, x0, shift, w, a, grad=None):
    """Sums of e^s and s over R per row, each [N] in the compute dtype (0 where w = 0).

    If ``grad`` [N, V] is given (it may be log_score itself), its rows are overwritten with
    w (e^s - a) at every y in R and 0 at x_t (0 on rows with w = 0); the x0 entry (where
    x0 != x_t) is left for the caller, which writes it in float64.
    """
    dtype = torch.promote_types(log_score.dtype, torch.float32)
    n, v = log_score.shape
    sum_exp = torch.zeros(n, dtype=dtype, device=log_score.device)
    sum_log = torch.zeros_like(sum_exp)
    live = w != 0
    if grad is not None:
        grad[~live] = 0
    for rows in torch.nonzero(live).squeeze(1).split(max(1, CHUNK_ELEMENTS // v)):
        s = log_score[rows].to(dtype) + shift[rows, None].to(dtype)
        e = torch.exp(s)
        outside = torch.stack([x_t[rows], x0[rows]], 1)  # x_t, and x0 (x_t again where x0 = x_t): the states not in R
        sum_exp[rows] = e.scatter_(1, outside, 0.0).sum(1)
        sum_log[rows] = s.scatter_(1, outside, 0.0).sum(1)
        if grad is not None:
            grad[rows] = e.sub_(a[rows, None].to(dtype)).mul_(w[rows, None].to(dtype)).scatter_(1, x_t[rows, None], 0.0).to(grad.dtype)
    return sum_exp, sum_log


# --------------------------------------------------------------------------- autograd
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
        if impl == "triton":
            from .kernels.score_entropy import triton_rows

            sum_exp, sum_log = triton_rows(log_score, x_t, x0, shift, w, a, grad)
        else:
            sum_exp, sum_log = torch_rows(log_score, x_t, x0, shift, w, a, grad)
        if grad is not None:
            # the x0 entry in float64: w b expm1(s_x0 - log b), free of the e^s - b cancellation
            rows = torch.nonzero((x0 != x_t) & (w > 0)).squeeze(1)
            v = log_s_x0[rows] - torch.log(b[rows])
            grad[rows, x0[rows]] = (w[rows] * b[rows] * torch.expm1(v)).to(grad.dtype)
            ctx.save_for_backward(grad)
        ctx.backward_done = False
        return dse_from_row_sums(sum_exp.double(), sum_log.double(), log_s_x0, x_t, x0, w, a, b, log_score.shape[1])

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.backward_done:
            raise RuntimeError("the fused score-entropy loss scales its stored gradient in place: backward can run once")
        ctx.backward_done = True
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_loss[:, None].to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None


def _rows_fn(impl):
    if impl == "triton":
        from .kernels.score_entropy import triton_rows

        return triton_rows
    return torch_rows


class LinearDSE(torch.autograd.Function):
    """DSE per row of ``hidden @ weight.T + bias`` without storing the [N, V] logits; float64 [N].

    Rows are processed in chunks of ``chunk`` (only rows with w > 0): forward keeps the row sums,
    backward recomputes each chunk's logits, writes the scaled gradient over them and turns it
    into the gradients of hidden, weight and bias (accumulated in at least float32). Peak extra memory is
    one chunk of logits plus a float32 copy of weight's gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, x_t, x0, shift, w, a, b, impl, chunk):
        rows_fn = _rows_fn(impl)
        live = torch.nonzero(w > 0).squeeze(1)
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        sum_exp = torch.zeros(hidden.shape[0], dtype=dtype, device=hidden.device)
        sum_log = torch.zeros_like(sum_exp)
        log_s_x0 = shift.clone()
        for rows in live.split(chunk):
            logits = torch.nn.functional.linear(hidden[rows], weight, bias)
            sum_exp[rows], sum_log[rows] = (t.to(dtype) for t in rows_fn(logits, x_t[rows], x0[rows], shift[rows], w[rows], a[rows]))
            log_s_x0[rows] += logits.gather(1, x0[rows, None]).squeeze(1).double()
        ctx.save_for_backward(hidden, weight, bias, x_t, x0, shift, w, a, b, live, log_s_x0)
        ctx.impl, ctx.chunk = impl, chunk
        return dse_from_row_sums(sum_exp.double(), sum_log.double(), log_s_x0, x_t, x0, w, a, b, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, x_t, x0, shift, w, a, b, live, log_s_x0 = ctx.saved_tensors
        rows_fn = _rows_fn(ctx.impl)
        scale = w * grad_loss.double()
        grad_hidden = torch.zeros_like(hidden)
        acc = torch.promote_types(weight.dtype, torch.float32)  # float32 (or wider) accumulation
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=acc, device=bias.device)
        for rows in live.split(ctx.chunk):
            logits = torch.nn.functional.linear(hidden[rows], weight, bias)
            rows_fn(logits, x_t[rows], x0[rows], shift[rows], scale[rows], a[rows], logits)  # gradient over the logits
            special = torch.nonzero(x0[rows] != x_t[rows]).squeeze(1)
            r = rows[special]
            logits[special, x0[r]] = (scale[r] * b[r] * torch.expm1(log_s_x0[r] - torch.log(b[r]))).to(logits.dtype)
            grad_hidden[rows] = logits @ weight
            grad_weight.addmm_(logits.t().to(acc), hidden[rows].to(acc))
            if grad_bias is not None:
                grad_bias += logits.to(acc).sum(0)
        return (
            grad_hidden,
            grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None, None, None, None, None, None, None, None,
        )
