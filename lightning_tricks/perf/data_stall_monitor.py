"""Measure how much of each training step is spent waiting for data, and say what to change.

The Lightning layer of [`DataStallTimer`][lightning_tricks.functional.DataStallTimer] and
[`data_stall_advice`][lightning_tricks.functional.data_stall_advice]
(``lightning_tricks.functional.perf.data_stall_monitor``): the callback decides when to
measure, log and warn.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._checks import check_bool, check_int, check_number, check_on_error
from lightning_tricks.functional.perf.data_stall_monitor import DataStallTimer, data_stall_advice

__all__ = ["DataStallMonitor"]

OnStall = Literal["warn", "ignore"]
"""What DataStallMonitor does when data loading is the bottleneck (it never raises)."""


class DataStallMonitor(Callback):
    """Log the fraction of each training step spent waiting for the next batch.

    The wait is the time from the end of one training batch (after the optimizer step)
    to the start of the next (loading the batch, collating it and moving it to the
    device); the step is that wait plus the time from ``on_train_batch_start`` to
    ``on_train_batch_end``. Both are read with ``time.perf_counter()`` only: nothing is
    synchronized and no tensor is created on steps that do not log. The fraction over
    the last ``window`` steps is logged as ``data_stall_monitor/wait_fraction`` (through
    ``LightningModule.log``, so every logger, ``EarlyStopping`` and ``ModelCheckpoint``
    see it) every ``log_every_n_steps`` steps, and once per fit, when it exceeds
    ``threshold``, a warning names the loader's settings and the concrete fixes.

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
        on_error: ``"warn"``: warn once per fit (global rank 0) when data loading is the
            bottleneck; ``"ignore"``: only log the fraction.

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
        on_error: OnStall = "warn",
    ) -> None:
        self.log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, minimum=1)
        self.window = check_int("window", window, minimum=1)
        self.threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
        self.sync = check_bool("sync", sync)
        self.on_error = check_on_error(on_error, get_args(OnStall))
        self._reset()

    def _reset(self) -> None:
        self._timer = DataStallTimer(self.window)
        self._warned = False
        self.last_fraction: float | None = None

    def fraction(self) -> float | None:
        """The waiting fraction over the last ``window`` measured steps (``None`` before any)."""
        return self._timer.fraction()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timer.pause()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timer.pause()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._timer.batch_start()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The wait measured after this step belongs to a logging step: sync before reading.
        logging = (self._timer.measured + 1) % self.log_every_n_steps == 0
        if logging and self.sync and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        if self._timer.batch_end() and self._timer.measured % self.log_every_n_steps == 0:
            self.last_fraction = self._timer.fraction()
            if self.last_fraction is not None:
                log_scalars(pl_module, self, {"wait_fraction": self.last_fraction})
            self._maybe_warn(trainer)
            self._timer.restart_wait()  # logging is not waiting for data

    def _maybe_warn(self, trainer: L.Trainer) -> None:
        if self.on_error == "ignore" or self._warned or not self._timer.full:
            return
        frac = self._timer.fraction()
        if frac is None or frac <= self.threshold:
            return
        self._warned = True
        advice = data_stall_advice(
            frac,
            trainer.train_dataloader,
            cuda=trainer.strategy.root_device.type == "cuda",
            threshold=self.threshold,
            steps=self._timer.steps_in_window,
        )
        rank_zero_warn(f"DataStallMonitor: {advice}")
