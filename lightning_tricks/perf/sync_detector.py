"""SyncDetector: report host-device syncs and CPU-built tensors inside ``training_step``.

The Lightning layer of [`detect_syncs`][lightning_tricks.functional.detect_syncs]
(``lightning_tricks.functional.perf.sync_detector``): the callback decides which steps
are inspected, and warns, raises or logs what the functional core finds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._checks import check_int, check_on_error, check_str_sequence
from lightning_tricks.functional.perf.sync_detector import SyncReport, detect_syncs

__all__ = ["SyncDetector"]


class SyncDetector(L.Callback):
    """Find ``.item()``, ``.cpu()``, ``if tensor:``, ``print(tensor)``, boolean-mask indexing,
    ``nonzero``, ``torch.tensor(...).to(device)`` and the like inside ``training_step``.

    On sampled steps, ``training_step`` runs under [`detect_syncs`][lightning_tricks.functional.detect_syncs]:
    every operation that forces the host to wait for the accelerator (or that builds a
    tensor on the CPU only to move it) is attributed to the line of your code that caused
    it and aggregated per call site. It works on CPU too, so a CPU CI run catches them
    before a GPU run. Lightning's own code (``self.log``) is not reported. On CUDA,
    PyTorch's ``set_sync_debug_mode`` is also on inside the step, restored after.

    On every inspected step the number of findings of that step is logged as
    ``sync_detector/findings`` (through ``LightningModule.log``, so every logger sees it).

    Args:
        on_error: ``"warn"``: one warning listing every call site at the end of fit (global
            rank 0); ``"raise"``: raise [`SyncDetectedError`][lightning_tricks.functional.SyncDetectedError]
            at the first finding, naming the call site; ``"ignore"``: only count (see
            `report`) and log.
        every_n_steps: inspect one optimizer step every this many (the others cost nothing).
        start_step: first step inspected (``trainer.global_step``).
        ignore: call sites to skip: substrings of ``"path/to/file.py:line"``.

    Example:
        >>> import lightning as L
        >>> from lightning_tricks.demos import ClassifierModule, ImageDataModule, cpu_trainer
        >>> detector = SyncDetector(every_n_steps=2)
        >>> cpu_trainer(max_epochs=1, callbacks=[detector]).fit(ClassifierModule(), ImageDataModule())
        >>> detector.report.total
        0
    """

    def __init__(
        self,
        on_error: Literal["warn", "raise", "ignore"] = "warn",
        every_n_steps: int = 100,
        start_step: int = 0,
        ignore: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.on_error = check_on_error(on_error)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        self.start_step = check_int("start_step", start_step, minimum=0)
        self.ignore = check_str_sequence("ignore", ignore, allow_empty=True)
        self.report = SyncReport()
        self._before = 0

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
            # the callback warns once per fit, for all inspected steps together
            on_error: Literal["raise", "ignore"] = "raise" if self.on_error == "raise" else "ignore"
            with detect_syncs(self.report, device=device, on_error=on_error, ignore=self.ignore):
                return original(*args, **kwargs)

        # an instance attribute, removed after the step
        setattr(pl_module, "training_step", training_step)  # noqa: B010 (mypy: no method assignment)
        self._before = self.report.total

    def _unwrap(self, pl_module: L.LightningModule) -> bool:
        if "training_step" in vars(pl_module):
            del pl_module.training_step
            return True
        return False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._unwrap(pl_module):
            log_scalars(pl_module, self, {"findings": float(self.report.total - self._before)})

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._unwrap(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap(pl_module)
        if self.on_error == "warn" and self.report.total:
            rank_zero_warn(self.report.format("SyncDetector: host-device syncs inside training_step"))
