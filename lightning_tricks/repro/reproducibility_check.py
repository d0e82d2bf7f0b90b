"""Write per-epoch weight checksums and find where a run diverges from a reference run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks.functional._checks import check_bool, check_choice, check_number, check_str
from lightning_tricks.functional.repro.checksums import (
    first_divergence,
    load_checksums,
    save_checksums,
    tensor_checksums,
)

__all__ = ["ReproducibilityCheck", "ReproducibilityError"]


class ReproducibilityError(RuntimeError):
    """A run's weights diverged from the reference run's (raised by :class:`ReproducibilityCheck`).

    Example:
        >>> str(ReproducibilityError("runs diverge at epoch 1"))
        'runs diverge at epoch 1'
    """


class ReproducibilityCheck(Callback):
    """Checksums every parameter after every epoch and compares them with a reference run.

    After each training epoch the checksums of all parameters (two hashes of the raw
    bytes, plus sum and norm; computed on the device, one transfer to the host) are
    added to a JSON file, rewritten atomically by global rank 0. Run once to produce a
    reference file, then again with ``reference=`` pointing to it: the first epoch and
    parameter where the runs differ is reported (a ``ReproducibilityError`` or a
    warning). The records are part of the callback's checkpoint state, so a resumed run
    writes the complete history.

    Args:
        path: the checksum file; a relative path is relative to the trainer's
            ``default_root_dir``.
        reference: a checksum file of an earlier run to compare with (``None``: only write).
        mode: ``"raise"`` stops training with ``ReproducibilityError``; ``"warn"``
            warns once and keeps training.
        compare: ``"every_epoch"`` compares as each epoch ends (stops at the first
            divergence); ``"end"`` compares all epochs once training ends.
        rtol: relative tolerance on each tensor's sum and norm; with ``rtol = atol = 0``
            (default) the weights must be bitwise identical.
        atol: absolute tolerance, likewise.
        buffers: also checksum buffers (e.g. BatchNorm running statistics).

    Raises:
        ValueError: bad arguments (messages name the argument).
        FileNotFoundError: at ``setup``, when ``reference`` does not exist.

    Example:
        >>> check = ReproducibilityCheck(path="checksums.json", mode="warn")
        >>> check.records
        {}
    """

    def __init__(
        self,
        path: str = "checksums.json",
        reference: str | None = None,
        mode: Literal["raise", "warn"] = "raise",
        compare: Literal["every_epoch", "end"] = "every_epoch",
        rtol: float = 0.0,
        atol: float = 0.0,
        buffers: bool = False,
    ) -> None:
        self.path = check_str("path", path)
        self.reference = None if reference is None else check_str("reference", reference)
        self.mode = check_choice("mode", mode, ("raise", "warn"))
        self.compare = check_choice("compare", compare, ("every_epoch", "end"))
        self.rtol = check_number("rtol", rtol, minimum=0)
        self.atol = check_number("atol", atol, minimum=0)
        self.buffers = check_bool("buffers", buffers)
        self.records: dict[int, dict[str, Any]] = {}
        self.divergence: str | None = None
        self._file: Path | None = None
        self._reference: dict[int, dict[str, Any]] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=self.path)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.records = {}  # a new fit starts a new history (a resume restores it after this)
        self.divergence = None
        path = Path(self.path)
        self._file = path if path.is_absolute() else Path(trainer.default_root_dir) / path
        self._reference = None
        if self.reference is not None:
            if not os.path.isfile(self.reference):
                raise FileNotFoundError(f"`reference` checksum file {self.reference!r} does not exist")
            if trainer.is_global_zero:
                self._reference = load_checksums(self.reference)

    def state_dict(self) -> dict[str, Any]:
        return {"records": {int(e): dict(v) for e, v in self.records.items()}, "divergence": self.divergence}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = {int(e): dict(v) for e, v in state_dict.get("records", {}).items()}
        self.divergence = state_dict.get("divergence")

    # ------------------------------------------------------------------ hooks
    # Every rank computes the checksums (same cost, in parallel), so every rank holds the
    # same records and reaches the same decisions below; only global rank 0 writes.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint written before this callback's on_train_epoch_end (e.g. by
        # ModelCheckpoint at validation end) lacks the previous epoch: the weights,
        # restored and not yet trained on, are still that epoch's final weights.
        epoch = trainer.current_epoch
        at_start = trainer.fit_loop.epoch_loop.batch_progress.current.completed == 0
        if epoch > 0 and at_start and (epoch - 1) not in self.records:
            self._record(trainer, pl_module, epoch - 1)
            self._check_epoch(trainer, epoch - 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, trainer.current_epoch)
        self._check_epoch(trainer, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.reference is None or self.compare != "end" or self.divergence is not None:
            return
        message = None
        if trainer.is_global_zero and self._reference is not None:
            found = first_divergence(self.records, self._reference, rtol=self.rtol, atol=self.atol)
            message = None if found is None else str(found)
        self._report(trainer, message)

    # ------------------------------------------------------------------ helpers
    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        self.records[epoch] = tensor_checksums(pl_module, buffers=self.buffers)
        if trainer.is_global_zero and self._file is not None:
            save_checksums(self._file, self.records)

    def _check_epoch(self, trainer: L.Trainer, epoch: int) -> None:
        if self.reference is None or self.compare != "every_epoch" or self.divergence is not None:
            return
        message = None
        if trainer.is_global_zero and self._reference is not None and epoch in self._reference:
            found = first_divergence(
                {epoch: self.records[epoch]},
                {epoch: self._reference[epoch]},
                rtol=self.rtol,
                atol=self.atol,
            )
            message = None if found is None else str(found)
        self._report(trainer, message)

    def _report(self, trainer: L.Trainer, message: str | None) -> None:
        if trainer.world_size > 1:  # the decision changes control flow: rank 0 decides for all
            message = trainer.strategy.broadcast(message, src=0)
        if message is None:
            return
        self.divergence = message
        if self.mode == "raise":
            raise ReproducibilityError(f"{message} (reference: {self.reference})")
        rank_zero_warn(f"ReproducibilityCheck: {message} (reference: {self.reference})")
