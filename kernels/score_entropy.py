"""Fused score-entropy kernels: one program per row, one pass over the vocabulary.

Loads are cast to float32 at once (bf16/fp16 inputs accumulate in float32); nothing of size
[N, V] is written except the gradient. Rows whose weight is 0 (unmasked positions of the
absorbing process) read nothing. See ``ddlm.dse_backends`` for the formulas and the float64
epilogue that turns the sums into the loss.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


def _block(num_states: int) -> int:
    return min(BLOCK, triton.next_power_of_2(num_states))


@triton.jit
def _dse_rows_kernel(
    s_ptr, s_stride, g_ptr, g_stride, x_ptr, x0_ptr, shift_ptr, w_ptr, a_ptr, sum_exp_ptr, sum_log_ptr, V,
    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + row)
    x0 = tl.load(x0_ptr + row)
    x0_out = tl.where(x0 == x, -1, x0)  # x0 leaves R only when it differs from x
    shift = tl.load(shift_ptr + row)
    w = tl.load(w_ptr + row)
    a = tl.load(a_ptr + row)
    live_len = tl.where(w != 0, V, 0)  # rows without loss read nothing (and get zero gradient)
    if WRITE_GRAD:
        end = V
    else:
        end = live_len
    acc_exp = tl.zeros([BLOCK], dtype=tl.float32)
    acc_log = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        live = (offs < live_len) & (offs != x)
        keep = live & (offs != x0_out)
        s = tl.load(s_ptr + row * s_stride + offs, mask=live, other=0.0).to(tl.float32) + shift
        e = tl.exp(s)
        acc_exp += tl.where(keep, e, 0.0)
        acc_log += tl.where(keep, s, 0.0)
        if WRITE_GRAD:  # may overwrite the log-scores just read (in place)
            g = tl.where(live, w * (e - a), 0.0)
            tl.store(g_ptr + row * g_stride + offs, g.to(g_ptr.dtype.element_ty), mask=offs < V)
    tl.store(sum_exp_ptr + row, tl.sum(acc_exp, axis=0))
    tl.store(sum_log_ptr + row, tl.sum(acc_log, axis=0))


def triton_rows(log_score, x_t, x0, shift, w, a, grad=None):
    """Triton version of ``ddlm.dse_backends.torch_rows``: float32 sums [N] and optional gradient rows."""
    if log_score.stride(1) != 1 or (grad is not None and grad.stride(1) != 1):
        raise ValueError("the fused score-entropy kernel needs log-scores contiguous along the vocabulary")
    n, v = log_score.shape
    sum_exp = torch.empty(n, dtype=torch.float32, device=log_score.device)
    sum_log = torch.empty_like(sum_exp)
    out = log_score if grad is None else grad
    _dse_rows_kernel[(n,)](
        log_score, log_score.stride(0), out, out.stride(0), x_t.contiguous(), x0.contiguous(),
        shift.float().contiguous(), w.float().contiguous(), a.float().contiguous(), sum_exp, sum_log, v,
        WRITE_GRAD=grad is not None, BLOCK=_block(v),
    )
    return sum_exp, sum_log
