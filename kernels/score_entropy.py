"""Fused score-entropy kernels: one program per row, one pass over the vocabulary.

Loads are cast to float32 at once (bf16/fp16 inputs accumulate in float32); nothing of size
[N, V] is written except the gradient. Rows whose weight is 0 (unmasked positions of the
absorbing process) read nothing. Each program sums the non-negative terms B_y over R of
``ddlm.dse_backends`` (a phi(u) with u = (s - hi) - lo, or e^u where a = 0) and writes the
gradient w a expm1(u) (w e^u where a = 0). The interpreter has no libdevice expm1, so phi and
expm1 come from a Taylor polynomial for |u| < 1 and from exp(u) - 1 beyond (both about 2e-7
relative). The caller adds the float64 x0 term.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.dse_numerics import BIG_U, SMALL_U, split_offset

BLOCK = 4096


def _block(num_states: int) -> int:
    return min(BLOCK, triton.next_power_of_2(num_states))


@triton.jit
def _phi_polynomial(u):
    """P(u) = sum_{k=0}^{9} u^k / (k + 2)!: phi(u) = u^2 P(u) and expm1(u) = u + u^2 P(u) for |u| < 1."""
    p = u * 2.505210838544172e-08 + 2.755731922398589e-07  # 1/11!, 1/10!
    p = p * u + 2.7557319223985893e-06
    p = p * u + 2.48015873015873e-05
    p = p * u + 0.0001984126984126984
    p = p * u + 0.001388888888888889
    p = p * u + 0.008333333333333333
    p = p * u + 0.041666666666666664
    p = p * u + 0.16666666666666666
    p = p * u + 0.5
    return p


@triton.jit
def _dse_rows_kernel(
    s_ptr, s_stride, g_ptr, g_stride, x_ptr, x0_ptr, hi_ptr, lo_ptr, a_ptr, log_a_ptr, w_ptr, sum_ptr, V,
    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr, SMALL_U: tl.constexpr, BIG_U: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x = tl.load(x_ptr + row)
    x0 = tl.load(x0_ptr + row)
    x0_out = tl.where(x0 == x, -1, x0)  # x0 leaves R only when it differs from x
    hi = tl.load(hi_ptr + row)
    lo = tl.load(lo_ptr + row)
    a = tl.load(a_ptr + row)
    log_a = tl.load(log_a_ptr + row)  # 0 where a = 0
    w = tl.load(w_ptr + row)
    positive = a > 0
    live_len = tl.where(w != 0, V, 0)  # rows without loss read nothing (and get zero gradient)
    if WRITE_GRAD:
        end = V
    else:
        end = live_len
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        live = (offs < live_len) & (offs != x)
        keep = live & (offs != x0_out)
        s = tl.load(s_ptr + row * s_stride + offs, mask=live, other=0.0).to(tl.float32)
        u = (s - hi) - lo  # exact near the optimum; u = s + shift where a = 0
        u2p = u * u * _phi_polynomial(u)
        small = tl.abs(u) < SMALL_U
        big = u > BIG_U
        e = tl.exp(tl.where(big, u + log_a, u))  # e^u, or a e^u = e^{u + log a} where e^u would overflow
        ae = tl.where(big, e, a * e)
        a_expm1 = tl.where(small, a * (u + u2p), ae - a)
        a_phi = tl.where(small, a * u2p, a_expm1 - a * u)
        acc += tl.where(keep, tl.where(positive, a_phi, e), 0.0)
        if WRITE_GRAD:  # may overwrite the log-scores just read (in place)
            g = tl.where(live, w * tl.where(positive, a_expm1, e), 0.0)
            tl.store(g_ptr + row * g_stride + offs, g.to(g_ptr.dtype.element_ty), mask=offs < V)
    tl.store(sum_ptr + row, tl.sum(acc, axis=0))


def triton_rows(log_score, x_t, x0, shift, w, a, grad=None):
    """Triton version of ``ddlm.dse_backends.torch_rows``: the sums of B [N] (float64) and optional gradient rows."""
    if log_score.stride(1) != 1 or (grad is not None and grad.stride(1) != 1):
        raise ValueError("the fused score-entropy kernel needs log-scores contiguous along the vocabulary")
    n, v = log_score.shape
    sums = torch.empty(n, dtype=torch.float32, device=log_score.device)
    hi, lo, log_a = split_offset(a, shift, torch.float32)
    out = log_score if grad is None else grad
    _dse_rows_kernel[(n,)](
        log_score, log_score.stride(0), out, out.stride(0), x_t.contiguous(), x0.contiguous(), hi.contiguous(),
        lo.contiguous(), a.float().contiguous(), log_a.contiguous(), w.float().contiguous(), sums, v,
        WRITE_GRAD=grad is not None, BLOCK=_block(v), SMALL_U=SMALL_U, BIG_U=BIG_U,
    )
    return sums.double()
