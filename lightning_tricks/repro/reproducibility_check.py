"""Write per-epoch weight checksums and find where a run diverges from a reference run.

The functional pair: [`ReproducibilityCheck`][lightning_tricks.ReproducibilityCheck] records with
[`tensor_checksums`][lightning_tricks.functional.tensor_checksums] and compares with
[`first_divergence`][lightning_tricks.functional.first_divergence]
(``lightning_tricks.functional.repro.reproducibility_check``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
from lightning.pytorch import Callback

from lightning_tricks._compat import training_batches_completed
from lightning_tricks._logging import component_dir, log_scalars
from lightning_tricks.functional._checks import (
    OnError,
    check_bool,
    check_choice,
    check_number,
    check_on_error,
    check_optional_path,
    check_str,
    report_problem,
)
from lightning_tricks.functional.repro.reproducibility_check import (
    first_divergence,
    load_checksums,
    save_checksums,
    tensor_checksums,
)

__all__ = ["ReproducibilityCheck", "ReproducibilityError"]

Compare = Literal["every_epoch", "end"]
"""When a [`ReproducibilityCheck`][lightning_tricks.ReproducibilityCheck] compares with the reference run."""


def _check_path(name: str, value: Any) -> str:
    """A non-empty path given as a string or ``os.PathLike``."""
    return check_str(name, os.fspath(value) if isinstance(value, os.PathLike) else value)


class ReproducibilityError(RuntimeError):
    """A run's weights diverged from the reference run's (raised by [`ReproducibilityCheck`][lightning_tricks.ReproducibilityCheck]).

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
    parameter where the runs differ is reported as ``on_error`` says. The records are
    part of the callback's checkpoint state, so a resumed run writes the complete history.

    With a ``reference`` and ``compare="every_epoch"``, the scalar
    ``reproducibility_check/diverged`` (0.0, or 1.0 from the first divergent epoch on) is
    logged at every epoch end, so that a divergence is visible in every logger even with
    ``on_error="ignore"``.

    Args:
        dirpath: folder of the checksum file; ``None``: ``<log_dir>/reproducibility_check/``
            (``trainer.log_dir``, or ``default_root_dir`` without a logger).
        filename: name of the checksum file in ``dirpath``.
        reference: path of a checksum file of an earlier run to compare with (``None``:
            only write).
        on_error: what a divergence does: ``"warn"`` warns once and keeps training;
            ``"raise"`` stops training with [`ReproducibilityError`][lightning_tricks.ReproducibilityError]; ``"ignore"``
            only records it (``divergence``, and the logged ``diverged`` scalar).
        compare: ``"every_epoch"`` compares as each epoch ends (``"raise"`` stops at the
            first divergent epoch); ``"end"`` compares all epochs once training ends.
        rtol: relative tolerance on each tensor's sum and norm; with ``rtol = atol = 0``
            (default) the weights must be bitwise identical.
        atol: absolute tolerance, likewise.
        buffers: also checksum buffers (e.g. BatchNorm running statistics).

    Raises:
        ValueError: bad arguments (messages name the argument).
        FileNotFoundError: at ``setup``, when ``reference`` does not exist.

    Example:
        >>> check = ReproducibilityCheck(dirpath="checks", on_error="raise")
        >>> check.records, check.filename
        ({}, 'checksums.json')
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "checksums.json",
        reference: str | None = None,
        on_error: OnError = "warn",
        compare: Compare = "every_epoch",
        rtol: float = 0.0,
        atol: float = 0.0,
        buffers: bool = False,
    ) -> None:
        self.dirpath = check_optional_path("dirpath", dirpath)
        self.filename = check_str("filename", filename)
        self.reference = None if reference is None else _check_path("reference", reference)
        self.on_error = check_on_error(on_error)
        self.compare = check_choice("compare", compare, get_args(Compare))
        self.rtol = check_number("rtol", rtol, minimum=0)
        self.atol = check_number("atol", atol, minimum=0)
        self.buffers = check_bool("buffers", buffers)
        self.records: dict[int, dict[str, Any]] = {}
        self.divergence: str | None = None
        self._file: Path | None = None
        self._reference: dict[int, dict[str, Any]] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=self.dirpath, filename=self.filename)

    @property
    def file(self) -> Path | None:
        """The checksum file this fit writes (known from ``setup`` on)."""
        return self._file

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.records = {}  # a new fit starts a new history (a resume restores it after this)
        self.divergence = None
        # every rank resolves the folder: `trainer.log_dir` broadcasts from rank 0
        self._file = component_dir(trainer, self, self.dirpath) / self.filename
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
        at_start = training_batches_completed(trainer) == 0
        if epoch > 0 and at_start and (epoch - 1) not in self.records:
            self._record(trainer, pl_module, epoch - 1)
            self._check_epoch(trainer, epoch - 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, trainer.current_epoch)
        self._check_epoch(trainer, trainer.current_epoch)
        if self.reference is not None and self.compare == "every_epoch":
            # the same value on every rank (rank 0's decision is broadcast); sync_dist only
            # keeps Lightning from warning about unsynchronised epoch-level values
            diverged = float(self.divergence is not None)
            log_scalars(pl_module, self, {"diverged": diverged}, on_step=False, on_epoch=True, sync_dist=True)

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
        # "raise" on every rank (all stop together); a warning from global rank 0 only
        if self.on_error == "raise" or trainer.is_global_zero:
            report_problem(
                self.on_error,
                f"ReproducibilityCheck: {message} (reference: {self.reference})",
                ReproducibilityError,
            )
