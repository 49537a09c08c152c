"""Suite-wide set-up: Triton kernels run in the CPU interpreter wherever there is no GPU; shared text and tokenizer fixtures."""

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


SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data beside the repository (real text for tests)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"tests need the shared data directory at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def byte_tokenizer(shared_data):
    """A 300-token byte-level BPE trained on the first 200 kB of tinyshakespeare."""
    from ddlm.tokenization import train_byte_bpe

    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    return train_byte_bpe([text[i:i + 10_000] for i in range(0, len(text), 10_000)], 300)
