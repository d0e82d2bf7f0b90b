"""DataStallMonitor and its functional core (DataStallTimer, data_stall_advice): a slow loader is
reported as the bottleneck, a fast one is not."""

from __future__ import annotations

import csv
import time
import warnings

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from lightning_tricks import DataStallMonitor
from lightning_tricks.functional import DataStallTimer, data_stall_advice
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
    values = {e.step: e.value for e in acc.Scalars("data_stall_monitor/wait_fraction")}
    return monitor, values, [str(w.message) for w in caught if "DataStallMonitor" in str(w.message)]


@pytest.fixture
def clock(monkeypatch):
    import lightning_tricks.functional.perf.data_stall_monitor as module

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


def test_on_error_ignore_logs_without_warning(tmp_path, clock):
    monitor, values, warned = _fit(0.02, tmp_path, clock, on_error="ignore")
    assert values and monitor.last_fraction == pytest.approx(0.08 / 0.09) and not warned


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"`on_error`.*'warn', 'ignore'; got 'raise'"):
        DataStallMonitor(on_error="raise")
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


def test_the_fraction_reaches_a_csv_logger(tmp_path, clock):
    monitor = DataStallMonitor(log_every_n_steps=2, window=4, threshold=0.5)
    logger = CSVLogger(tmp_path, name="run")
    trainer = cpu_trainer(callbacks=[monitor], max_epochs=1, logger=logger, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(_TimedModule(clock), datamodule=_SlowData(0.02, clock))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    values = [
        float(r["data_stall_monitor/wait_fraction"])
        for r in rows
        if r.get("data_stall_monitor/wait_fraction")
    ]
    assert values and all(v == pytest.approx(0.08 / 0.09) for v in values)
    assert "data_wait_fraction" not in rows[0]


def test_timer_in_a_plain_loop(clock):
    timer = DataStallTimer(window=3)
    assert timer.fraction() is None
    for wait, compute in [(0.5, 0.5), (0.3, 0.1), (0.3, 0.1), (0.3, 0.1)]:
        clock.now += wait  # loading the batch
        timer.batch_start()
        clock.now += compute  # the step
        timer.batch_end()
    # the first step has no wait before it; the window keeps the last 3 measured steps
    assert timer.measured == 3 and timer.full
    assert timer.fraction() == pytest.approx(0.75)
    timer.pause()  # e.g. validation: not waiting for data
    clock.now += 10.0
    timer.batch_start()
    clock.now += 0.1
    assert timer.batch_end() is False and timer.fraction() == pytest.approx(0.75)
    timer.reset()
    assert timer.measured == 0 and timer.fraction() is None
    with pytest.raises(ValueError, match="`window`"):
        DataStallTimer(window=0)


def test_advice_names_what_the_loader_does_not_apply_yet():
    data = list(range(8))
    bare = data_stall_advice(0.6, {"a": [DataLoader(data)]}, cuda=True, threshold=0.3, steps=20)
    assert bare.startswith(
        "60% of each training step is spent waiting for data (threshold 30%, over the last 20"
    )
    assert "num_workers` > 0" in bare and "pin_memory=True" in bare
    tuned = data_stall_advice(0.6, DataLoader(data, num_workers=2, pin_memory=True, persistent_workers=True))
    assert "raise `num_workers` above 2" in tuned and "pin_memory=True`" not in tuned
    assert "persistent_workers=True`" not in tuned
    assert "more DataLoader workers" in data_stall_advice(0.6)
    with pytest.raises(ValueError, match="`fraction`"):
        data_stall_advice(1.5)
