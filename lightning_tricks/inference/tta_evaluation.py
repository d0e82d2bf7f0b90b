"""TTAEvaluation: measure what test-time augmentation gains on the validation/test set.

The callback decides on which batches to evaluate and accumulates the metrics; the
comparison itself is [`tta_evaluation`][lightning_tricks.functional.tta_evaluation] and
[`tta_flips`][lightning_tricks.functional.tta_flips].
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch import Callback

from lightning_tricks._logging import log_scalars
from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_str_sequence,
)
from lightning_tricks.functional.inference.tta_evaluation import tta_evaluation, tta_flips
from lightning_tricks.functional.inference.tta_predict import MERGE_MODES, MergeMode, check_chunk_size
from lightning_tricks.functional.inference.views import parse_views
from lightning_tricks.inference.tta_predict import TTAPredict

__all__ = ["TTAEvaluation"]

Metric = Literal["accuracy", "f1", "precision", "recall"]
METRICS: tuple[str, ...] = get_args(Metric)


class TTAEvaluation(Callback):
    """Compute a metric with and without TTA on the same validation/test batches and log both.

    On each evaluated batch the identity view and the TTA views run in one forward pass
    ([`tta_evaluation`][lightning_tricks.functional.tta_evaluation]); the identity output is the
    plain prediction. At the end of the epoch it logs through ``LightningModule.log`` (so
    every logger, ``EarlyStopping`` and ``ModelCheckpoint`` see them), for ``stage`` =
    ``val`` or ``test``:

    * ``tta_evaluation/{stage}_{metric}_plain`` and ``tta_evaluation/{stage}_{metric}_tta``,
      and their difference ``tta_evaluation/{stage}_{metric}_gain``;
    * ``tta_evaluation/{stage}_correct_to_wrong`` and
      ``tta_evaluation/{stage}_wrong_to_correct``: fractions of samples (pixels, for dense
      outputs) whose argmax prediction TTA turned from right to wrong and from wrong to
      right ([`tta_flips`][lightning_tricks.functional.tta_flips]).

    Metrics are torchmetrics objects (multiclass, macro average except accuracy), so their
    states are synchronised across DDP ranks before the values are logged. The callback
    never changes training: no gradients, no weight or RNG changes. It costs one extra
    forward pass per view on evaluated batches only.

    Args:
        views: TTA views as strings, see [`parse_view`][lightning_tricks.functional.parse_view].
        merge: how TTA merges the views (see [`merge_outputs`][lightning_tricks.functional.merge_outputs]).
        metric: ``"accuracy"``, ``"f1"``, ``"precision"`` or ``"recall"``.
        num_classes: number of classes; ``None`` reads it from the logits' dimension 1.
        include_identity: whether the TTA prediction includes the identity view.
        chunk_size: most images per forward pass; ``"auto"`` plans it once per input shape
            (see [`tta_predict`][lightning_tricks.functional.tta_predict]), ``None`` runs all at once.
        on_validation: evaluate during validation.
        on_test: evaluate during testing.
        every_n_epochs: evaluate validation every this many epochs.
        input_index: position of the input in a tuple/list batch.
        target_index: position of the target in a tuple/list batch.

    Raises:
        ValueError: for arguments out of range.
        TypeError: for arguments of the wrong type.

    Example:
        >>> cb = TTAEvaluation(views=["hflip", "vflip"], merge="mean_softmax")
        >>> cb.views, cb.metric
        (('hflip', 'vflip'), 'accuracy')
    """

    def __init__(
        self,
        views: Sequence[str] = ("hflip",),
        merge: MergeMode = "mean",
        metric: Metric = "accuracy",
        num_classes: int | None = None,
        include_identity: bool = True,
        chunk_size: int | Literal["auto"] | None = "auto",
        on_validation: bool = True,
        on_test: bool = True,
        every_n_epochs: int = 1,
        input_index: int = 0,
        target_index: int = 1,
    ) -> None:
        self.views = check_str_sequence("views", views)
        try:
            parse_views(self.views)
        except (TypeError, ValueError) as err:
            raise type(err)(f"`views`: {err}") from None
        self.merge = check_choice("merge", merge, MERGE_MODES)
        self.metric = check_choice("metric", metric, METRICS)
        self.num_classes = check_optional_int("num_classes", num_classes, minimum=2)
        self.include_identity = check_bool("include_identity", include_identity)
        self.chunk_size = check_chunk_size(chunk_size)
        self.on_validation = check_bool("on_validation", on_validation)
        self.on_test = check_bool("on_test", on_test)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.input_index = check_int("input_index", input_index, minimum=0)
        self.target_index = check_int("target_index", target_index, minimum=0)
        if self.input_index == self.target_index:
            raise ValueError(f"`input_index` and `target_index` must differ; both are {input_index}")
        self._metrics: dict[str, dict[str, Any]] = {}

    # -------------------------------------------------------------------------------- helpers
    def _build(self, num_classes: int, device: torch.device) -> dict[str, Any]:
        from torchmetrics import MeanMetric
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassF1Score,
            MulticlassPrecision,
            MulticlassRecall,
        )

        cls = {
            "accuracy": MulticlassAccuracy,
            "f1": MulticlassF1Score,
            "precision": MulticlassPrecision,
            "recall": MulticlassRecall,
        }[self.metric]
        average = "micro" if self.metric == "accuracy" else "macro"
        return {
            "plain": cls(num_classes=num_classes, average=average).to(device),
            "tta": cls(num_classes=num_classes, average=average).to(device),
            "c2w": MeanMetric().to(device),
            "w2c": MeanMetric().to(device),
        }

    def _active(self, trainer: L.Trainer, stage: str) -> bool:
        if trainer.sanity_checking:
            return False
        if stage == "val":
            return self.on_validation and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return self.on_test

    def _update(self, pl_module: L.LightningModule, batch: Any, stage: str) -> None:
        if not isinstance(batch, list | tuple) or len(batch) <= max(self.input_index, self.target_index):
            raise TypeError(
                f"TTAEvaluation needs tuple/list batches with the input at `input_index`={self.input_index} and "
                f"the target at `target_index`={self.target_index}; got {type(batch).__name__}"
            )
        x, y = batch[self.input_index], batch[self.target_index]
        # with TTAPredict(tta_on_test=True) the module's own forward is TTA during test: compare
        # its plain forward (and apply TTA once), not TTA with TTA-of-TTA
        plain_forward = (
            pl_module.tta_disabled() if isinstance(pl_module, TTAPredict) else contextlib.nullcontext()
        )
        with plain_forward:
            plain, tta = tta_evaluation(
                pl_module, x, self.views, self.merge, self.chunk_size, include_identity=self.include_identity
            )
        if stage not in self._metrics:
            k = self.num_classes or (plain.shape[1] if plain.ndim >= 2 else 0)
            if plain.ndim < 2 or k < 2:
                raise ValueError(
                    f"TTAEvaluation needs class logits (B, K, ...) with K >= 2; got shape {tuple(plain.shape)}"
                )
            self._metrics[stage] = self._build(k, plain.device)
        m = self._metrics[stage]
        y = y.to(plain.device)
        m["plain"].update(plain, y)
        m["tta"].update(tta, y)
        c2w, w2c = tta_flips(plain, tta, y)
        m["c2w"].update(c2w.float().flatten())
        m["w2c"].update(w2c.float().flatten())

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        m = self._metrics.pop(stage, None)
        if m is None:
            return
        values = {k: metric.compute() for k, metric in m.items()}  # synced across ranks
        name = f"{stage}_{self.metric}"
        logs = {
            f"{name}_plain": values["plain"],
            f"{name}_tta": values["tta"],
            f"{name}_gain": values["tta"] - values["plain"],
            f"{stage}_correct_to_wrong": values["c2w"],
            f"{stage}_wrong_to_correct": values["w2c"],
        }
        # identical on every rank already: the mean over ranks changes nothing
        logs = {k: v.float() for k, v in logs.items()}
        log_scalars(pl_module, self, logs, on_step=False, on_epoch=True, sync_dist=True)

    # ---------------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._metrics = {}

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active(trainer, "val"):
            self._update(pl_module, batch, "val")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer, "val"):
            self._log(pl_module, "val")
        self._metrics.pop("val", None)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active(trainer, "test"):
            self._update(pl_module, batch, "test")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer, "test"):
            self._log(pl_module, "test")
        self._metrics.pop("test", None)
