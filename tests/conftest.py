"""Suite-wide set-up: Triton kernels run in the CPU interpreter wherever there is no GPU; the excerpts of real text in tests/data and a tokenizer trained on them."""

import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n K runs K workers: one thread each (and in the subprocesses they start), so the workers
    # do not oversubscribe the cores and spin-wait in OpenMP against each other.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


TEXT_DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def text_data() -> pathlib.Path:
    """tests/data: excerpts of real text kept in the repository (tests/data/NOTICE says what and whose)."""
    return TEXT_DATA


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A 300-token byte-level BPE trained on the first 200 kB of tinyshakespeare (``helpers.byte_tokenizer``)."""
    from helpers import byte_tokenizer

    return byte_tokenizer()
