"""pytest-benchmark benchmarks: the harness's hot paths on real-size logs, and the kernels on a GPU.

    pytest benchmarks/ --benchmark-only                  time them (pytest-benchmark's table)
    pytest benchmarks/ --benchmark-only --benchmark-autosave, then --benchmark-compare   against the last saved
    pytest benchmarks/ --benchmark-disable               each once, as a smoke test (`make test` runs them so)

Set-up as tests/conftest.py: without a GPU, Triton runs under its interpreter (TRITON_INTERPRET=1, set before
anything imports triton), and nothing reaches the Hugging Face hub. The harness benchmarks' logs are
benchmarks/sample_logs.py's, at a real log's size.
"""
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from benchmarks.sample_logs import source_code, write_logs  # noqa: E402


@pytest.fixture(scope="session")
def logs_folder(tmp_path_factory):
    """8 real-size logs of one record."""
    return write_logs(tmp_path_factory.mktemp("logs") / "baseline", 8, mean_ms=80_700, seed=1)


@pytest.fixture(scope="session")
def two_variants(tmp_path_factory):
    """20 logs of a baseline and 20 of a variant 1.3% faster, each variant its own code."""
    root = tmp_path_factory.mktemp("variants")
    return (write_logs(root / "base", 20, mean_ms=80_700, seed=2),
            write_logs(root / "new", 20, mean_ms=79_650, seed=3, code=source_code() + "# new\n"))


@pytest.fixture
def fresh_dir(tmp_path_factory):
    """A function giving a new empty folder per call: for benchmark rounds that write (ingest) and start clean."""
    return lambda: tmp_path_factory.mktemp("round")
