from __future__ import annotations

import os
import warnings

# One intra-op thread per test process: the suite runs in parallel processes (pytest -n 2) on
# small tensors, where OpenMP threads only spin. Set before torch is imported; DDP worker
# processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")
warnings.filterwarnings("ignore", ".*does not have many workers.*")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _deterministic():
    """Each test starts from the same global RNG state and deterministic algorithms."""
    torch.manual_seed(0)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(prev)
