"""Fused reverse-sampling steps: one pass over the vocabulary per row, no [N, V] intermediates.

Every supported step has the same shape per row with current token x: candidates y != x (and
y != ``exclude``) carry weight ``c_row * exp(s_y)`` and staying carries ``stay_row``, where the row
constants follow from Z = sum over candidates of exp(s_y), the forward-rate value w = Q[y, x] and
kappa (see ``MODES``). A draw is the argmax of log-weight + Gumbel noise (equivalent to the
exponential race of ``ddlm.sampling``); the candidates' argmax is kept as a running maximum and Z as
an online log-sum-exp, so one read of the log-scores suffices. Race keys and the Gumbel noise
(53-bit uniforms from Philox, counter row * V + y) are float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# euler: leave mass kappa w Z (kappa = dt sigma(t)); stay = max(0, 1 - kappa w Z). Also the
#        absorbing analytic step, with kappa = expm1(dsigma).
# tau_leaping: leave with 1 - exp(-kappa w Z), destination ~ exp(s_y); stay = exp(-kappa w Z).
# denoise: stay = 0 and candidates ~ exp(s_y) (the absorbing final step with the mask excluded).
MODES = {"euler": 0, "tau_leaping": 1, "denoise": 2}
MAX_TILE = 4096


@triton.jit
def _gumbel(seed, offsets):
    r0, r1, _, _ = tl.randint4x(seed, offsets)
    hi = (r0.to(tl.uint32, bitcast=True) >> 5).to(tl.float64)
    lo = (r1.to(tl.uint32, bitcast=True) >> 6).to(tl.float64)
    u = (hi * 67108864.0 + lo + 0.5) / 9007199254740992.0  # (0, 1) with 53 random bits
    return -tl.log(-tl.log(u))


@triton.jit
def _reverse_step_kernel(
    s_ptr, s_stride, x_ptr, w_ptr, kappa_ptr, out_ptr, N, V, exclude, seed,
    MODE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < N
    rows = rows.to(tl.int64)
    x = tl.load(x_ptr + rows, mask=row_ok, other=0)
    w = tl.load(w_ptr + rows, mask=row_ok, other=0.0)
    kappa = tl.load(kappa_ptr + rows, mask=row_ok, other=0.0)
    live_len = tl.where(w > 0, V, 0)  # rows that cannot move read nothing
    best = tl.full([BLOCK_ROWS], float("-inf"), tl.float64)
    best_idx = x
    run_max = tl.full([BLOCK_ROWS], float("-inf"), tl.float64)
    run_sum = tl.zeros([BLOCK_ROWS], tl.float64)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        cand = (cols[None, :] < live_len[:, None]) & (cols[None, :] != x[:, None]) & (cols[None, :] != exclude)
        s = tl.load(s_ptr + rows[:, None] * s_stride + cols[None, :], mask=cand, other=0.0).to(tl.float64)
        s = tl.where(cand, s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        pivot = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - pivot) + tl.sum(tl.exp(s - pivot[:, None]), axis=1)
        run_max = new_max
        keys = tl.where(cand, s + _gumbel(seed, rows[:, None] * V + cols[None, :]), float("-inf"))
        block_best = tl.max(keys, axis=1)
        block_idx = tl.argmax(keys, axis=1).to(tl.int64) + start
        better = block_best > best
        best = tl.where(better, block_best, best)
        best_idx = tl.where(better, block_idx, best_idx)
    total = run_sum * tl.exp(tl.where(run_max == float("-inf"), 0.0, run_max))  # Z
    rate = kappa * w * total
    if MODE == 0:
        stay = tl.maximum(1.0 - rate, 0.0)
        log_c = tl.log(kappa * w)
    elif MODE == 1:
        leave = tl.where(rate < 1e-6, rate - 0.5 * rate * rate, 1.0 - tl.exp(-rate))  # no expm1 in the interpreter
        stay = tl.exp(-rate)
        log_c = tl.log(leave) - tl.log(total)
    else:
        stay = tl.zeros([BLOCK_ROWS], tl.float64)
        log_c = tl.zeros([BLOCK_ROWS], tl.float64)
    stay_key = tl.log(stay) + _gumbel(seed, rows * V + x)
    out = tl.where(best + log_c > stay_key, best_idx, x)
    tl.store(out_ptr + rows, out, mask=row_ok)


def triton_reverse_step(log_score, x, w, kappa, mode, seed, exclude=-1):
    """One fused reverse step per row: Long[N] next tokens.

    log_score [N, V] (any float dtype, contiguous along V); x Long[N]; w, kappa [N] (float64);
    mode a key of ``MODES``; seed an int (the Philox key); exclude a state never drawn (-1: none).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if log_score.stride(1) != 1:
        raise ValueError("the fused sampling kernel needs log-scores contiguous along the vocabulary")
    n, v = log_score.shape
    block_v = min(MAX_TILE, triton.next_power_of_2(v))
    block_rows = max(1, min(1024, MAX_TILE // block_v))  # tiny vocabularies: many rows a program
    out = torch.empty(n, dtype=torch.long, device=log_score.device)
    grid = (triton.cdiv(n, block_rows),)
    _reverse_step_kernel[grid](
        log_score, log_score.stride(0), x.contiguous(), w.double().contiguous(), kappa.double().contiguous(), out,
        n, v, exclude, seed, MODE=MODES[mode], BLOCK_ROWS=block_rows, BLOCK_V=block_v,
    )
    return out
