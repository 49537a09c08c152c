"""Triton kernels, importable as ``ddlm.kernels`` (they need the ``triton`` extra).

``score_entropy``: per-row sums and gradient rows of denoising score entropy in one pass over the
vocabulary. Run on CUDA tensors, or on CPU under ``TRITON_INTERPRET=1``.
"""
