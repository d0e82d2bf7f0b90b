"""Measure how much of each training step is spent waiting for data, and say what to change."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader

from lightning_tricks.functional._checks import check_bool, check_int, check_number

__all__ = ["DataStallMonitor"]


def _loaders(obj: Any) -> list[DataLoader]:
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [dl for o in obj for dl in _loaders(o)]
    return []


def loader_advice(loaders: list[DataLoader], cuda: bool) -> str:
    """The cheat sheet's data-loading advice, for the settings that are not applied yet."""
    if not loaders:
        return "Use more DataLoader workers, pinned memory and persistent workers."
    dl = loaders[0]
    workers, pin, persistent = dl.num_workers, dl.pin_memory, dl.persistent_workers
    tips = []
    if workers == 0:
        tips.append(
            "set `num_workers` > 0 (start with the CPU cores per GPU, e.g. 4-8) so batches load in parallel"
        )
    else:
        tips.append(f"raise `num_workers` above {workers} if CPU cores are idle")
    if cuda and not pin:
        tips.append("set `pin_memory=True` (faster, asynchronous host-to-GPU copies)")
    if workers > 0 and not persistent:
        tips.append("set `persistent_workers=True` (workers are not restarted every epoch)")
    tips.append("move decoding/augmentation off the critical path (cache decoded data, GPU augmentation)")
    return (
        f"current train loader: num_workers={workers}, pin_memory={pin}, "
        f"persistent_workers={persistent}. Try: " + "; ".join(tips) + "."
    )


class DataStallMonitor(Callback):
    """Log the fraction of each training step spent waiting for the next batch.

    The wait is the time from the end of one training batch (after the optimizer step)
    to the start of the next (loading the batch, collating it and moving it to the
    device); the step is that wait plus the time from ``on_train_batch_start`` to
    ``on_train_batch_end``. Both are read with ``time.perf_counter()`` only: nothing is
    synchronized and no tensor is created on steps that do not log. The fraction over
    the last ``window`` steps is logged as ``data_wait_fraction`` every
    ``log_every_n_steps`` steps, and once per fit, when it exceeds ``threshold``, a
    warning names the loader's settings and the concrete fixes.

    On a GPU the compute is asynchronous: the host reaches ``on_train_batch_end`` before
    the kernels finish, so the fraction is an upper bound on the time the GPU waits for
    data. ``sync=True`` synchronizes the device at the end of every
    ``log_every_n_steps``-th step before reading the clock, which makes that step's
    compute time and the wait that follows it exact, at the cost of one sync per log.
    The first step of each epoch and the steps right after validation are not counted.

    Args:
        log_every_n_steps: log the fraction every this many training steps.
        window: number of recent steps the fraction is averaged over.
        threshold: warn when the fraction over a full window exceeds this.
        sync: synchronize CUDA on logging steps for exact numbers on a GPU.
        warn: warn when data loading is the bottleneck.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for out-of-range values.

    Example:
        >>> import lightning as L
        >>> monitor = DataStallMonitor(log_every_n_steps=10, threshold=0.3)
        >>> trainer = L.Trainer(callbacks=[monitor], accelerator="cpu", logger=False)
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        window: int = 20,
        threshold: float = 0.3,
        sync: bool = False,
        warn: bool = True,
    ) -> None:
        self.log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, minimum=1)
        self.window = check_int("window", window, minimum=1)
        self.threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
        self.sync = check_bool("sync", sync)
        self.warn = check_bool("warn", warn)
        self._reset()

    def _reset(self) -> None:
        self._waits: deque[float] = deque(maxlen=self.window)
        self._steps: deque[float] = deque(maxlen=self.window)
        self._last_end: float | None = None
        self._start = 0.0
        self._wait: float | None = None
        self._count = 0
        self._warned = False
        self.last_fraction: float | None = None

    def fraction(self) -> float | None:
        """The waiting fraction over the last ``window`` measured steps (``None`` before any)."""
        total = sum(self._steps)
        return sum(self._waits) / total if total > 0 else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        self._wait = None if self._last_end is None else self._start - self._last_end

    def _sync(self, pl_module: L.LightningModule) -> None:
        if self.sync and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The wait measured after this step belongs to a logging step: sync before reading.
        if (self._count + 1) % self.log_every_n_steps == 0:
            self._sync(pl_module)
        end = time.perf_counter()
        if self._wait is not None:
            self._waits.append(self._wait)
            self._steps.append(self._wait + (end - self._start))
            self._count += 1
            if self._count % self.log_every_n_steps == 0:
                self.last_fraction = self.fraction()
                if self.last_fraction is not None:
                    pl_module.log("data_wait_fraction", self.last_fraction, on_step=True, on_epoch=False)
                self._maybe_warn(trainer)
        self._last_end = time.perf_counter()

    def _maybe_warn(self, trainer: L.Trainer) -> None:
        if not self.warn or self._warned or len(self._steps) < self.window:
            return
        frac = self.fraction()
        if frac is None or frac <= self.threshold:
            return
        self._warned = True
        cuda = trainer.strategy.root_device.type == "cuda"
        rank_zero_warn(
            f"DataStallMonitor: {100 * frac:.0f}% of each training step is spent waiting for data "
            f"(threshold {100 * self.threshold:.0f}%, over the last {len(self._steps)} steps): "
            "data loading is the bottleneck. " + loader_advice(_loaders(trainer.train_dataloader), cuda)
        )
