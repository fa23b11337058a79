"""Test-wide setup.

Runs before any test module imports triton: without a GPU, Triton kernels run under its
interpreter (TRITON_INTERPRET=1), which must be set before `@triton.jit` decorates anything.
Tests never reach the Hugging Face hub: HF_HUB_OFFLINE=1 makes a download fail at once instead of
after ~23 s of retries.
"""
import os
import zlib

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test, but reproducible from the test id when a failure is investigated.
    # crc32, not hash(): Python salts str hashes per process, so hash() would give a new seed every run.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def where(tmp_path):
    """A records directory and a runs directory for the harness tests (neither exists yet)."""
    return {"records": tmp_path / "records", "runs": tmp_path / "runs"}
