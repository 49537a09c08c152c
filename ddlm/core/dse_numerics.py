"""What the DSE backends share: the thresholds on u and the split of the per-row offset.

Both the PyTorch backends (``ddlm.dse_backends``) and the Triton kernel (``ddlm.kernels.score_entropy``)
form u = (log_score - hi) - lo and switch formulas at the same |u| (the module docstring of
``ddlm.dse_backends`` explains both); they import these from here, so neither imports the other's module.
"""

from __future__ import annotations

import torch

SMALL_U = 1.0  # |u| below this: phi and expm1 from the Taylor polynomial
BIG_U = 80.0  # u above this: a e^u from e^{u + log a} (e^u would overflow in float32)


def split_offset(a: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype):
    """(hi, lo, log_a) [N] in dtype: c = log a - shift = hi + lo to float64 precision; log a := 0 where a = 0."""
    log_a = torch.log(torch.where(a > 0, a, torch.ones_like(a)))
    c = log_a - shift
    hi = c.to(dtype)
    lo = (c - hi.double()).to(dtype)
    return hi, lo, log_a.to(dtype)
