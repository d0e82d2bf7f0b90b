"""SyncDetector: report host-device syncs and CPU-built tensors inside ``training_step``."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks.functional._checks import check_choice, check_int, check_str_sequence
from lightning_tricks.functional.perf.sync_detect import SyncReport, detect_syncs

__all__ = ["SyncDetector"]

_MODES = ("warn", "raise", "count")


class SyncDetector(L.Callback):
    """Find ``.item()``, ``.cpu()``, ``if tensor:``, ``print(tensor)``, boolean-mask indexing,
    ``nonzero``, ``torch.tensor(...).to(device)`` and the like inside ``training_step``.

    On sampled steps, ``training_step`` runs under :func:`~lightning_tricks.functional.detect_syncs`:
    every operation that forces the host to wait for the accelerator (or that builds a
    tensor on the CPU only to move it) is attributed to the line of your code that caused
    it and aggregated per call site. It works on CPU too, so a CPU CI run catches them
    before a GPU run. Lightning's own code (``self.log``) is not reported. On CUDA,
    PyTorch's ``set_sync_debug_mode`` is also on inside the step, restored after.

    Args:
        mode: ``"warn"``: one warning listing every call site at the end of fit (global
            rank 0); ``"raise"``: raise :class:`~lightning_tricks.functional.SyncDetectedError`
            at the first finding, naming the call site; ``"count"``: only count (see
            :attr:`report`) and log ``sync_detector/findings`` on sampled steps.
        every_n_steps: inspect one optimizer step every this many (the others cost nothing).
        start_step: first step inspected (``trainer.global_step``).
        ignore: call sites to skip: substrings of ``"path/to/file.py:line"``.

    Example:
        >>> import lightning as L
        >>> from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer
        >>> detector = SyncDetector(every_n_steps=2)
        >>> cpu_trainer(max_epochs=1, callbacks=[detector]).fit(ClassifierModule(), ImageDataModule())
        >>> detector.report.total
        0
    """

    def __init__(
        self,
        mode: Literal["warn", "raise", "count"] = "warn",
        every_n_steps: int = 100,
        start_step: int = 0,
        ignore: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, _MODES)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        self.start_step = check_int("start_step", start_step, minimum=0)
        self.ignore = check_str_sequence("ignore", ignore, allow_empty=True)
        self.report = SyncReport()
        self._active: contextlib.ExitStack | None = None

    def _sampled(self, step: int) -> bool:
        return step >= self.start_step and (step - self.start_step) % self.every_n_steps == 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report = SyncReport()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._sampled(trainer.global_step):
            return
        original = type(pl_module).training_step.__get__(pl_module)
        device = pl_module.device

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            with detect_syncs(
                self.report, device=device, raise_on_first=self.mode == "raise", ignore=self.ignore
            ):
                return original(*args, **kwargs)

        pl_module.training_step = training_step  # instance attribute, removed after the step
        self._before = self.report.total

    def _unwrap(self, pl_module: L.LightningModule) -> bool:
        if "training_step" in vars(pl_module):
            del pl_module.training_step
            return True
        return False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._unwrap(pl_module) and self.mode == "count":
            pl_module.log("sync_detector/findings", float(self.report.total - self._before), on_step=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._unwrap(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap(pl_module)
        if self.mode == "warn" and self.report.total:
            rank_zero_warn(self.report.format("SyncDetector: host-device syncs inside training_step"))
