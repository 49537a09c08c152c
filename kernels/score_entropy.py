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
def _row_sums_kernel(s_ptr, s_stride, x_ptr, x0_ptr, shift_ptr, w_ptr, sum_exp_ptr, sum_log_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + row)
    x0 = tl.load(x0_ptr + row)
    x0_out = tl.where(x0 == x, -1, x0)  # x0 leaves R only when it differs from x
    shift = tl.load(shift_ptr + row).to(tl.float32)
    active_len = tl.where(tl.load(w_ptr + row) > 0, V, 0)  # rows without loss read nothing
    acc_exp = tl.zeros([BLOCK], dtype=tl.float32)
    acc_log = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, active_len, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        keep = (offs < V) & (offs != x) & (offs != x0_out)
        s = tl.load(s_ptr + row * s_stride + offs, mask=keep, other=0.0).to(tl.float32) + shift
        acc_exp += tl.where(keep, tl.exp(s), 0.0)
        acc_log += tl.where(keep, s, 0.0)
    tl.store(sum_exp_ptr + row, tl.sum(acc_exp, axis=0))
    tl.store(sum_log_ptr + row, tl.sum(acc_log, axis=0))


@triton.jit
def _row_grad_kernel(s_ptr, s_stride, g_ptr, g_stride, x_ptr, shift_ptr, scale_ptr, a_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + row)
    shift = tl.load(shift_ptr + row).to(tl.float32)
    scale = tl.load(scale_ptr + row)
    a = tl.load(a_ptr + row)
    active_len = tl.where(scale != 0, V, 0)  # rows without gradient read nothing and get zeros
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        in_bounds = offs < V
        live = (offs < active_len) & (offs != x)
        s = tl.load(s_ptr + row * s_stride + offs, mask=live, other=0.0).to(tl.float32) + shift
        g = tl.where(live, scale * (tl.exp(s) - a), 0.0)
        tl.store(g_ptr + row * g_stride + offs, g.to(g_ptr.dtype.element_ty), mask=in_bounds)


def triton_row_sums(log_score, x_t, x0, shift, w):
    """Sums of e^s and s over R = {y != x_t, y != x0} per row, float32 [N] each (0 where w = 0)."""
    log_score = log_score.contiguous()
    n, v = log_score.shape
    sum_exp = torch.empty(n, dtype=torch.float32, device=log_score.device)
    sum_log = torch.empty_like(sum_exp)
    _row_sums_kernel[(n,)](
        log_score, log_score.stride(0), x_t.contiguous(), x0.contiguous(), shift.float().contiguous(),
        w.float().contiguous(), sum_exp, sum_log, v, BLOCK=_block(v),
    )
    return sum_exp, sum_log


def triton_row_grad(log_score, x_t, shift, scale, a):
    """scale (e^s - a) at every y != x_t, 0 at x_t and on rows with scale = 0: [N, V] in log_score's dtype."""
    log_score = log_score.contiguous()
    n, v = log_score.shape
    grad = torch.empty_like(log_score)
    _row_grad_kernel[(n,)](
        log_score, log_score.stride(0), grad, grad.stride(0), x_t.contiguous(), shift.float().contiguous(),
        scale.float().contiguous(), a.float().contiguous(), v, BLOCK=_block(v),
    )
    return grad
