"""Suite-wide set-up: Triton kernels run in the CPU interpreter wherever there is no GPU."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
