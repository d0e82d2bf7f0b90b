"""PredictionWriter: predictions of every rank merged into one file, in dataset order.

The callback decides when and on which rank; the work is done by
[`save_rank_predictions`][lightning_tricks.functional.save_rank_predictions] (every rank) and
[`merge_rank_predictions`][lightning_tricks.functional.merge_rank_predictions] (global rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks._logging import component_dir
from lightning_tricks.functional._checks import check_bool, check_optional_path, check_str
from lightning_tricks.functional.inference.prediction_writer import (
    load_predictions,
    merge_rank_predictions,
    prediction_to_cpu,
    save_rank_predictions,
)

__all__ = ["PredictionWriter", "load_predictions"]  # load_predictions: re-exported from the functional core


class PredictionWriter(BasePredictionWriter):
    """Write ``trainer.predict`` outputs with their dataset indices, merged across ranks.

    Each rank collects its predictions (moved to CPU) with the dataset indices Lightning's
    predict loop reports, writes them atomically to ``{stem}.rank{global_rank}.pt``
    ([`save_rank_predictions`][lightning_tricks.functional.save_rank_predictions]), and after a barrier
    global rank 0 merges all rank files into ``filename``
    ([`merge_rank_predictions`][lightning_tricks.functional.merge_rank_predictions]): rows sorted by
    dataset index, each index kept once. This removes the duplicates a
    ``DistributedSampler`` adds to pad the last batch (Lightning's own predict sampler
    does not pad, but a sampler you pass with ``use_distributed_sampler=False`` may).
    The result holds every predicted sample exactly once, in dataset order; read it with
    [`load_predictions`][lightning_tricks.functional.load_predictions]. With several predict dataloaders, one file per dataloader is
    written (``{stem}_dl{k}.pt``). Works the same with [`TTAPredict`][lightning_tricks.TTAPredict]
    (TTA-merged predictions) or [`FeaturePredict`][lightning_tricks.FeaturePredict] (dicts).

    ``predict_step`` must return a tensor, or a dict/list of tensors, with one row per
    sample of the batch.

    Args:
        dirpath: folder of the files; ``None`` writes to ``<log_dir>/prediction_writer/``
            (``trainer.log_dir``, or ``default_root_dir`` without a logger).
        filename: name of the merged file (a ``.pt`` file written with ``torch.save``).
        keep_rank_files: keep the per-rank files after merging.

    Raises:
        ValueError: for an empty ``dirpath`` or a ``filename`` that is not a ``.pt`` name.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import tempfile
        >>> writer = PredictionWriter(tempfile.mkdtemp(), filename="preds.pt")
        >>> writer.filename
        'preds.pt'
    """

    def __init__(
        self, dirpath: str | None = None, filename: str = "predictions.pt", keep_rank_files: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        self.dirpath = check_optional_path("dirpath", dirpath)
        self.filename = check_str("filename", filename)
        if not self.filename.endswith(".pt") or "/" in self.filename or self.filename == ".pt":
            raise ValueError(f"`filename` must be a plain file name ending in '.pt'; got {filename!r}")
        self.keep_rank_files = check_bool("keep_rank_files", keep_rank_files)
        self._buffers: dict[int, list[tuple[torch.Tensor, Any]]] = {}
        self._dir: Path | None = None

    @property
    def stem(self) -> str:
        """The file name without ``.pt``."""
        return self.filename[: -len(".pt")]

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._buffers = {}
        self._dir = component_dir(trainer, self, self.dirpath)  # trainer.log_dir is the same on every rank

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if batch_indices is None or len(batch_indices) == 0:
            raise RuntimeError(
                "PredictionWriter needs the dataset indices of each batch, which Lightning only knows for "
                "torch DataLoaders with a (batch) sampler; pass a DataLoader to trainer.predict"
            )
        indices = torch.as_tensor(list(batch_indices), dtype=torch.long)
        self._buffers.setdefault(dataloader_idx, []).append(
            (indices, prediction_to_cpu(prediction, len(indices)))
        )

    def _paths(self, trainer: L.Trainer, k: int) -> tuple[Path, list[Path]]:
        n_dl = max(1, len(trainer.num_predict_batches))
        stem = self.stem if n_dl == 1 else f"{self.stem}_dl{k}"
        out = self._dir if self._dir is not None else component_dir(trainer, self, self.dirpath)
        return out / f"{stem}.pt", [out / f"{stem}.rank{r}.pt" for r in range(trainer.world_size)]

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n_dl = max(1, len(trainer.num_predict_batches))
        for k in range(n_dl):
            _, rank_paths = self._paths(trainer, k)
            save_rank_predictions(rank_paths[trainer.global_rank], self._buffers.get(k, []))
        self._buffers = {}
        trainer.strategy.barrier("PredictionWriter.rank_files")
        if trainer.is_global_zero:
            for k in range(n_dl):
                merged_path, rank_paths = self._paths(trainer, k)
                result = merge_rank_predictions(rank_paths, merged_path, keep_rank_files=self.keep_rank_files)
                if result is not None:
                    self._check_complete(trainer, k, len(result["indices"]))
        trainer.strategy.barrier("PredictionWriter.merged")

    def _check_complete(self, trainer: L.Trainer, k: int, written: int) -> None:
        loaders = trainer.predict_dataloaders
        dataset = getattr(loaders[k] if isinstance(loaders, list | tuple) else loaders, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and written != len(dataset):
            rank_zero_warn(
                f"PredictionWriter wrote {written} of the {len(dataset)} samples of the predict "
                "dataset (limit_predict_batches or an uneven sampler?)"
            )
