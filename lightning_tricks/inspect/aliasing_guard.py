"""AliasingGuard: catch in-place changes to batch tensors that share memory with the dataset."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lightning_tricks.functional._checks import OnError, check_int, check_on_error, report_problem
from lightning_tricks.functional.inspect.aliasing_guard import dataset_storages, find_aliased_tensors

__all__ = ["AliasingError", "AliasingGuard"]


class AliasingError(RuntimeError):
    """Raised by [`AliasingGuard`][lightning_tricks.AliasingGuard] with ``on_error="raise"``.

    Example:
        >>> isinstance(AliasingError("x"), RuntimeError)
        True
    """


def _loaders(obj: Any) -> list[DataLoader]:
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [d for o in obj for d in _loaders(o)]
    if isinstance(obj, dict):
        return [d for o in obj.values() for d in _loaders(o)]
    return []


class AliasingGuard(Callback):
    """Warn (or raise) when a training step changes, in place, a batch tensor that is a view of the dataset.

    A DataLoader's default collate copies samples into a new batch, but a loader with
    ``batch_size=None`` over a dataset that returns slices, a custom collate that
    returns views, or a dataset kept on the training device hands out tensors that share
    memory with the dataset. Normalising such a batch in place (``x -= mean`` instead of
    ``x = x - mean``) silently corrupts the dataset for every later epoch.

    Every ``every_n_steps`` steps the guard finds the batch tensors whose storage is one
    of the training dataset's tensors, notes their version counter and a copy, and
    after the step reports any that changed, naming the batch position and the dataset
    tensor. Nothing is done on other steps; on sampled steps the comparison of an aliased
    tensor with its copy is the only possible device sync. Every report of the current fit
    is kept in `found` (one message per batch position), whatever ``on_error`` says.

    Args:
        every_n_steps: check every N-th step (step 0 included).
        on_error: ``"warn"`` (the default), ``"raise"`` ([`AliasingError`][lightning_tricks.AliasingError]) or
            ``"ignore"`` (only record the report in `found`).

    Raises:
        ValueError: for an ``on_error`` other than ``"warn"``, ``"raise"``, ``"ignore"``.

    Example:
        >>> from lightning_tricks import AliasingGuard
        >>> AliasingGuard(every_n_steps=1, on_error="raise").every_n_steps
        1
    """

    def __init__(self, every_n_steps: int = 50, on_error: OnError = "warn") -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        self.on_error = check_on_error(on_error)
        self.found: list[str] = []
        self._watch: list[tuple[str, torch.Tensor, str, int, torch.Tensor]] = []
        self._step = 0
        self._reported: set[str] = set()
        self._storages: dict[int, str] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._watch, self._reported, self.found = [], set(), []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._storages = None  # loaders may be reloaded between epochs: scan again, once

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        self._watch = []
        self._step = (
            trainer.global_step
        )  # the step this batch belongs to (it is incremented before batch end)
        if trainer.global_step % self.every_n_steps != 0:
            return
        if self._storages is None:  # once per epoch, on its first sampled step
            self._storages = {}
            for loader in _loaders(trainer.train_dataloader):
                self._storages.update(dataset_storages(loader.dataset))
        for path, tensor, name in find_aliased_tensors(batch, self._storages):
            self._watch.append((path, tensor, name, tensor._version, tensor.detach().clone()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        watch, self._watch = self._watch, []
        for path, tensor, name, version, copy in watch:
            if path in self._reported:
                continue
            if tensor._version == version and torch.equal(tensor, copy):
                continue
            self._reported.add(path)
            msg = (
                f"AliasingGuard: `{path}` shares memory with `{name}` and was modified in place during "
                f"training step {self._step}; the dataset now holds the modified values for every "
                f"later epoch. Work on a copy (`x = x.clone()`, or `x = x - mean` instead of `x -= mean`)."
            )
            self.found.append(msg)
            if self.on_error == "warn":
                rank_zero_warn(msg)
            else:
                report_problem(self.on_error, msg, AliasingError)
