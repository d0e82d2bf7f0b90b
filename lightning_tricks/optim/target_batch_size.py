"""Reach a target global batch size with gradient accumulation, and log the true loss per step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader

from lightning_tricks._compat import fit_data_source, should_update_logs
from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._checks import check_bool, check_int, check_optional_int
from lightning_tricks.functional.optim.target_batch_size import (
    WindowMean,
    _leading_dims,
    accumulation_steps,
)

__all__ = ["TargetBatchSize"]


def _loader_batch_size(loader: Any) -> int | None:
    if not isinstance(loader, DataLoader):
        return None
    if loader.batch_size is not None:
        return int(loader.batch_size)
    size = getattr(loader.batch_sampler, "batch_size", None)
    return int(size) if isinstance(size, int) else None


class TargetBatchSize(Callback):
    """Set gradient accumulation so that ``batch_size x world_size x accumulation == global_batch_size``.

    At ``setup`` it reads the per-device batch size from the train ``DataLoader`` (or
    takes ``per_device_batch_size``) and sets ``trainer.accumulate_grad_batches``,
    before the optimizers and schedulers are configured (so
    ``trainer.estimated_stepping_batches`` is right). It logs
    ``target_batch_size/effective_batch_size`` once per epoch and, on logging steps,
    ``target_batch_size/actual_loss``: the mean loss over the samples of the optimizer
    step that just ran, averaged over ranks. Both go through ``LightningModule.log``, so
    every logger, ``EarlyStopping`` and ``ModelCheckpoint`` see them.

    Lightning hands callbacks ``loss / accumulate_grad_batches`` and divides the last,
    shorter window of an epoch by the full count too, so neither its per-batch value nor
    a sum over the window is the step's loss; ``actual_loss`` undoes the division and
    averages over the batches that were really in the window (weighted by their size).
    Between logging steps it costs two device additions per batch and no host sync.

    The number of samples in each batch (its weight in ``actual_loss``) is, in this
    order: ``batch_size_fn(batch)``; the ``"batch_size"`` entry of the dict that
    ``training_step`` returns; the leading dimension of the first tensor with one in
    the batch, looking into dicts (HF ``BatchEncoding``, ``ModelOutput``), lists,
    tuples and dataclasses alike and skipping 0-d tensors. When none gives a size, the
    batch counts as a full one (the per-device batch size) and one warning names the
    batch type and the fix; a batch whose tensors disagree on the leading dimension
    also warns once (the first tensor's is used).

    Args:
        global_batch_size: samples per optimizer step, over all processes.
        per_device_batch_size: the per-process batch size, when it cannot be read from
            the train ``DataLoader`` (e.g. an ``IterableDataset`` that batches itself).
        log_actual_loss: log ``target_batch_size/actual_loss``.
        batch_size_fn: a callable ``batch -> number of samples`` for batches the
            automatic rule cannot measure (e.g. graph batches).

    Raises:
        ValueError: for a bad argument, or (in ``setup``) if ``global_batch_size`` is not a
            multiple of ``batch_size x world_size``; or ``batch_size_fn`` returns
            something that is not a positive int.
        TypeError: ``batch_size_fn`` is not callable.
        MisconfigurationException: if ``Trainer(accumulate_grad_batches=...)`` or a
            ``GradientAccumulationScheduler`` sets a different accumulation, or the model
            uses manual optimization.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[TargetBatchSize(global_batch_size=256)], logger=False)
    """

    def __init__(
        self,
        global_batch_size: int,
        per_device_batch_size: int | None = None,
        log_actual_loss: bool = True,
        batch_size_fn: Callable[[Any], int] | None = None,
    ) -> None:
        self.global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
        self.per_device_batch_size = check_optional_int(
            "per_device_batch_size", per_device_batch_size, minimum=1
        )
        self.log_actual_loss = check_bool("log_actual_loss", log_actual_loss)
        if batch_size_fn is not None and not callable(batch_size_fn):
            raise TypeError(
                f"`batch_size_fn` must be a callable batch -> int or None; got {batch_size_fn!r:.60}"
            )
        self.batch_size_fn = batch_size_fn
        self._warned: set[str] = set()
        self.accumulate_grad_batches: int | None = None
        self._window = WindowMean()
        self._stepped = False
        self._batch_size_seen: int | None = None

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(message, category=UserWarning)

    def _batch_weight(self, batch: Any, outputs: Any) -> float:
        """The number of samples in ``batch`` (see the class docstring for the rule)."""
        if self.batch_size_fn is not None:
            size = self.batch_size_fn(batch)
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                hint = (
                    " (a tensor would be read on every step, a device sync)" if torch.is_tensor(size) else ""
                )
                raise ValueError(
                    f"`batch_size_fn` must return a positive int, e.g. `len(batch['x'])`; got {size!r:.60}{hint}"
                )
            return float(size)
        if isinstance(outputs, Mapping) and "batch_size" in outputs:
            return float(outputs["batch_size"])
        dims = _leading_dims(batch)
        full = float(self._batch_size_seen or 1)
        if not dims:
            self._warn_once(
                "missing",
                f"`TargetBatchSize` cannot find the number of samples in a training batch of type"
                f" {type(batch).__name__} (it holds no tensor with a batch dimension), so `actual_loss`"
                f" counts such batches as full ones of {int(full)} samples, which over-weights a"
                " shorter last batch. Pass `TargetBatchSize(batch_size_fn=...)` (batch -> int) or return"
                " {'loss': loss, 'batch_size': n} from `training_step`.",
            )
            return full
        if any(d != dims[0] for d in dims):
            self._warn_once(
                "ambiguous",
                f"`TargetBatchSize`: the tensors of a training batch of type {type(batch).__name__} have"
                f" different leading dimensions {sorted(set(dims))}; using the first ({dims[0]}) as the"
                " number of samples. Pass `TargetBatchSize(batch_size_fn=...)` (batch -> int) or return"
                " {'loss': loss, 'batch_size': n} from `training_step` to say which.",
            )
        return float(dims[0])

    def _batch_size(self, trainer: pl.Trainer) -> int:
        if self.per_device_batch_size is not None:
            return self.per_device_batch_size
        source = fit_data_source(trainer)
        size = _loader_batch_size(source.dataloader()) if source.is_defined() else None
        if size is None:
            raise MisconfigurationException(
                "`TargetBatchSize` could not read the batch size of the train dataloader (it needs a"
                " torch DataLoader with `batch_size` or a `batch_sampler` with `batch_size`); pass"
                " `per_device_batch_size`"
            )
        return size

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "`TargetBatchSize` sets `accumulate_grad_batches`, which needs automatic optimization;"
                f" {type(pl_module).__name__}.automatic_optimization is False"
            )
        if any(isinstance(c, GradientAccumulationScheduler) for c in getattr(trainer, "callbacks", [])):
            raise MisconfigurationException(
                "`TargetBatchSize` and `GradientAccumulationScheduler` both set the accumulation; remove one"
            )
        batch_size = self._batch_size(trainer)
        accumulate = accumulation_steps(self.global_batch_size, batch_size, trainer.world_size)
        if trainer.accumulate_grad_batches not in (1, accumulate):
            raise MisconfigurationException(
                f"`Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})` conflicts with"
                f" `TargetBatchSize(global_batch_size={self.global_batch_size})`, which needs"
                f" {accumulate} (= {self.global_batch_size} / ({batch_size} x {trainer.world_size}));"
                " remove `accumulate_grad_batches` from the Trainer"
            )
        trainer.accumulate_grad_batches = accumulate
        self.accumulate_grad_batches = accumulate
        self._batch_size_seen = batch_size
        self._window.reset()
        self._stepped = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        actual = _loader_batch_size(trainer.train_dataloader)
        if self.per_device_batch_size is None and actual is not None and actual != self._batch_size_seen:
            raise MisconfigurationException(
                f"`TargetBatchSize`: the train dataloader's batch size changed from {self._batch_size_seen}"
                f" at setup to {actual}; pass `per_device_batch_size`"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window.reset()  # Lightning's windows never cross an epoch boundary
        self._stepped = False
        # an epoch-level value, written when the epoch ends whatever `log_every_n_steps`;
        # the same on every rank (sync_dist only keeps Lightning's DDP advice quiet)
        log_scalars(
            pl_module,
            self,
            {"effective_batch_size": float(self.global_batch_size)},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._stepped = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log_actual_loss:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning divided the loss by the accumulation count; undo it
            weight = self._batch_weight(batch, outputs)
            self._window.update(loss.detach() * trainer.accumulate_grad_batches, weight)
        if not self._stepped:
            return
        self._stepped = False
        if should_update_logs(trainer) and self._window.num_updates:
            sums = self._window.sums()
            if trainer.world_size > 1:
                sums = trainer.strategy.reduce(sums, reduce_op="sum")
            log_scalars(pl_module, self, {"actual_loss": sums[0] / sums[1]})
        self._window.reset()
