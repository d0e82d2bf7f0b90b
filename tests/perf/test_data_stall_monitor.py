"""DataStallMonitor: a slow loader is reported as the bottleneck, a fast one is not."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from lightning_tricks import DataStallMonitor
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, make_image_dataset


class _Clock:
    """A fake ``time`` module: only the data loading and the training step advance it."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


class _SlowDataset(Dataset):
    def __init__(self, delay: float, clock: _Clock | None):
        self.data, self.delay, self.clock = make_image_dataset(32), delay, clock

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.clock is None:
            time.sleep(self.delay)
        else:
            self.clock.now += self.delay
        return self.data[i]


class _SlowData(ImageDataModule):
    def __init__(self, delay: float, clock: _Clock | None = None):
        super().__init__(n_train=32, batch_size=4)
        self.delay, self.clock = delay, clock

    def train_dataloader(self):
        return DataLoader(_SlowDataset(self.delay, self.clock), batch_size=4)


class _TimedModule(ClassifierModule):
    """Each training step "takes" 10 ms on the fake clock."""

    def __init__(self, clock: _Clock):
        super().__init__()
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock.now += 0.01
        return super().training_step(batch, batch_idx)


def _fit(delay, tmp_path, clock=None, **kwargs):
    monitor = DataStallMonitor(log_every_n_steps=2, window=4, threshold=0.5, **kwargs)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = cpu_trainer(callbacks=[monitor], max_epochs=1, logger=logger, log_every_n_steps=1)
    model = ClassifierModule() if clock is None else _TimedModule(clock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=_SlowData(delay, clock))
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    acc.Reload()
    # Lightning repeats the last on_step value at every step: keep the steps where it was logged
    values = {e.step: e.value for e in acc.Scalars("data_wait_fraction")}
    return monitor, values, [str(w.message) for w in caught if "DataStallMonitor" in str(w.message)]


@pytest.fixture
def clock(monkeypatch):
    import lightning_tricks.perf.data_stall_monitor as module

    fake = _Clock()
    monkeypatch.setattr(module, "time", fake)
    return fake


def test_slow_loader_is_reported_with_advice(tmp_path, clock):
    monitor, values, warned = _fit(0.02, tmp_path, clock)  # 80 ms of loading, 10 ms of compute
    # 8 batches, the first is not measured: the fraction is logged after measured steps 2, 4 and 6
    assert monitor.last_fraction == pytest.approx(0.08 / 0.09)
    assert values and all(v == pytest.approx(0.08 / 0.09) for v in values.values())
    assert len(warned) == 1 and "89% of each training step" in warned[0]
    assert (
        "num_workers=0" in warned[0] and "pin_memory=False" in warned[0] and "num_workers` > 0" in warned[0]
    )


def test_fast_loader_is_not_reported(tmp_path, clock):
    monitor, values, warned = _fit(0.0, tmp_path, clock)
    assert values and max(values.values()) == 0.0 and monitor.last_fraction == 0.0 and not warned


def test_real_sleep_raises_the_fraction(tmp_path):
    slow, _, _ = _fit(0.05, tmp_path / "slow")
    fast, _, _ = _fit(0.0, tmp_path / "fast")
    assert slow.last_fraction > fast.last_fraction


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="`threshold`"):
        DataStallMonitor(threshold=1.5)
    with pytest.raises(TypeError, match="`window`"):
        DataStallMonitor(window=2.0)


@pytest.mark.gpu
def test_sync_on_gpu(tmp_path):
    monitor = DataStallMonitor(log_every_n_steps=2, window=2, sync=True)
    trainer = cpu_trainer(accelerator="gpu", callbacks=[monitor], max_epochs=1)
    trainer.fit(ClassifierModule(), datamodule=ImageDataModule())
    assert monitor.last_fraction is not None and 0.0 <= monitor.last_fraction <= 1.0
    assert torch.cuda.is_available()
