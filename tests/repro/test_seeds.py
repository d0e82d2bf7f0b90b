"""freeze_seeds: every generator and flag it promises, and restore()."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import lightning_tricks
from lightning_tricks.functional import SeedRecord, freeze_seeds, seed_worker


@pytest.fixture
def record_restored():
    records: list[SeedRecord] = []
    keys = ("PYTHONHASHSEED", "PL_GLOBAL_SEED", "CUBLAS_WORKSPACE_CONFIG")
    env = {k: os.environ.get(k) for k in keys}
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield records
    for r in reversed(records):
        r.restore()
    assert {k: os.environ.get(k) for k in keys} == env
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == flags


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_same_draws_from_every_generator(record_restored):
    record_restored.append(freeze_seeds(123))
    first = _draws()
    record_restored.append(freeze_seeds(123))
    assert _draws() == first
    record_restored.append(freeze_seeds(124))
    other = _draws()
    assert all(a != b for a, b in zip(other, first))


def test_deterministic_mode_sets_every_flag(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    record = freeze_seeds(5, deterministic=True)
    try:
        assert torch.backends.cudnn.deterministic is True
        assert torch.backends.cudnn.benchmark is False
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert os.environ["PYTHONHASHSEED"] == "5"
        assert record.previous["torch.backends.cudnn.benchmark"] is False
        assert record.previous["env:CUBLAS_WORKSPACE_CONFIG"] is None
        for key in ("random.seed", "numpy.random.seed", "torch.manual_seed", "torch.cuda.manual_seed_all"):
            assert record.set[key] == 5
        assert any("PYTHONHASHSEED" in note and "started from now on" in note for note in record.notes)
    finally:
        record.restore()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_existing_valid_cublas_config_is_kept(record_restored, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    record_restored.append(freeze_seeds(0))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_non_deterministic_mode_turns_benchmark_on(record_restored):
    record = freeze_seeds(1, deterministic=False)
    record_restored.append(record)
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.deterministic is False
    assert not torch.are_deterministic_algorithms_enabled()
    record.restore()
    record_restored.clear()
    assert torch.are_deterministic_algorithms_enabled()  # the conftest fixture's setting is back


def test_restore_puts_back_rng_states_and_env(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "77")
    torch.manual_seed(99)
    expected = torch.rand(2)
    torch.manual_seed(99)
    record = freeze_seeds(3)
    record.restore()
    assert torch.equal(torch.rand(2), expected)
    assert os.environ["PYTHONHASHSEED"] == "77"


def test_pythonhashseed_reaches_child_processes(record_restored):
    record_restored.append(freeze_seeds(11))
    code = "print(hash('lightning-tricks'))"
    a = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ).stdout
    b = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ).stdout
    assert a == b and a.strip()


def test_top_level_export_is_the_same_function():
    assert lightning_tricks.freeze_seeds is freeze_seeds


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"deterministic": "yes"}, "deterministic"),
        ({"deterministic": True, "benchmark": True}, "benchmark"),
        ({"warn_only": 1}, "warn_only"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    before = torch.initial_seed()
    with pytest.raises((TypeError, ValueError), match=name):
        freeze_seeds(**kwargs)
    assert torch.initial_seed() == before  # nothing was set before the error


def test_seed_worker_makes_worker_draws_reproducible():
    from torch.utils.data import DataLoader, Dataset

    class Draws(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor([random.random(), float(np.random.rand())])

    def run():
        loader = DataLoader(
            Draws(),
            batch_size=2,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(0),
        )
        return torch.cat(list(loader))

    a, b = run(), run()
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[2])  # the two workers draw different numbers
