"""PredictionWriter: predictions of every rank merged into one file, in dataset order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks.functional._checks import check_bool, check_str
from lightning_tricks.functional._io import atomic_write

__all__ = ["PredictionWriter", "load_predictions"]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_cpu(v) for v in obj]
    raise TypeError(
        f"PredictionWriter can write tensors, dicts and lists of tensors; predict_step returned {type(obj).__name__}"
    )


def _cat(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(items, dim=0)
    if isinstance(first, dict):
        return {k: _cat([it[k] for it in items]) for k in first}
    return [_cat([it[i] for it in items]) for i in range(len(first))]


def _take(obj: Any, index: torch.Tensor) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[index]
    if isinstance(obj, dict):
        return {k: _take(v, index) for k, v in obj.items()}
    return [_take(v, index) for v in obj]


def _rows(obj: Any) -> set[int]:
    if isinstance(obj, torch.Tensor):
        return {obj.shape[0] if obj.ndim else -1}
    items = obj.values() if isinstance(obj, dict) else obj
    return set().union(*(_rows(v) for v in items)) if items else set()


def load_predictions(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a file written by :class:`PredictionWriter` (``weights_only=True``).

    Args:
        path: the merged file.

    Returns:
        ``{"indices": LongTensor (N,), "predictions": tensor | dict | list of tensors}``,
        sorted by dataset index, one row per sample.

    Example:
        >>> import tempfile, torch, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.pt"
        >>> torch.save({"indices": torch.arange(2), "predictions": torch.zeros(2)}, p)
        >>> load_predictions(p)["indices"]
        tensor([0, 1])
    """
    return torch.load(path, map_location="cpu", weights_only=True)


class PredictionWriter(BasePredictionWriter):
    """Write ``trainer.predict`` outputs with their dataset indices, merged across ranks.

    Each rank collects its predictions (moved to CPU) with the dataset indices Lightning's
    predict loop reports, writes them atomically to ``{stem}.rank{global_rank}.pt``, and
    after a barrier global rank 0 merges all rank files into ``filename``: rows sorted by
    dataset index, each index kept once. This removes the duplicates a
    ``DistributedSampler`` adds to pad the last batch (Lightning's own predict sampler
    does not pad, but a sampler you pass with ``use_distributed_sampler=False`` may).
    The result holds every predicted sample exactly once, in dataset order; read it with
    :func:`load_predictions`. With several predict dataloaders, one file per dataloader is
    written (``{stem}_dl{k}.pt``). Works the same with :class:`~lightning_tricks.TTAPredict`
    (TTA-merged predictions) or :class:`~lightning_tricks.FeaturePredict` (dicts).

    ``predict_step`` must return a tensor, or a dict/list of tensors, with one row per
    sample of the batch.

    Args:
        output_dir: folder of the files.
        filename: name of the merged file (a ``.pt`` file written with ``torch.save``).
        keep_rank_files: keep the per-rank files after merging.

    Raises:
        ValueError: for an empty ``output_dir`` or a ``filename`` that is not a ``.pt`` name.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import tempfile
        >>> writer = PredictionWriter(tempfile.mkdtemp(), filename="preds.pt")
        >>> writer.filename
        'preds.pt'
    """

    def __init__(
        self, output_dir: str, filename: str = "predictions.pt", keep_rank_files: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = check_str("output_dir", output_dir)
        self.filename = check_str("filename", filename)
        if not self.filename.endswith(".pt") or "/" in self.filename or self.filename == ".pt":
            raise ValueError(f"`filename` must be a plain file name ending in '.pt'; got {filename!r}")
        self.keep_rank_files = check_bool("keep_rank_files", keep_rank_files)
        self._buffers: dict[int, list[tuple[torch.Tensor, Any]]] = {}

    @property
    def stem(self) -> str:
        """The file name without ``.pt``."""
        return self.filename[: -len(".pt")]

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._buffers = {}

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
        prediction = _to_cpu(prediction)
        rows = _rows(prediction)
        if rows != {len(indices)}:
            raise ValueError(
                f"predict_step must return one row per sample: the batch has {len(indices)} samples but the "
                f"prediction has leading sizes {sorted(rows)}"
            )
        self._buffers.setdefault(dataloader_idx, []).append((indices, prediction))

    def _paths(self, trainer: L.Trainer, k: int) -> tuple[Path, list[Path]]:
        n_dl = max(1, len(trainer.num_predict_batches))
        stem = self.stem if n_dl == 1 else f"{self.stem}_dl{k}"
        out = Path(self.output_dir)
        return out / f"{stem}.pt", [out / f"{stem}.rank{r}.pt" for r in range(trainer.world_size)]

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n_dl = max(1, len(trainer.num_predict_batches))
        for k in range(n_dl):
            items = self._buffers.get(k, [])
            payload = {
                "indices": torch.cat([i for i, _ in items]) if items else torch.zeros(0, dtype=torch.long),
                "predictions": _cat([p for _, p in items]) if items else None,
            }
            _, rank_paths = self._paths(trainer, k)
            atomic_write(rank_paths[trainer.global_rank], lambda tmp, p=payload: torch.save(p, tmp))
        self._buffers = {}
        trainer.strategy.barrier("PredictionWriter.rank_files")
        if trainer.is_global_zero:
            for k in range(n_dl):
                self._merge(trainer, k)
        trainer.strategy.barrier("PredictionWriter.merged")

    def _merge(self, trainer: L.Trainer, k: int) -> None:
        merged_path, rank_paths = self._paths(trainer, k)
        parts = [torch.load(p, map_location="cpu", weights_only=True) for p in rank_paths]
        parts = [p for p in parts if p["predictions"] is not None]
        if not parts:
            return
        indices = torch.cat([p["indices"] for p in parts])
        preds = _cat([p["predictions"] for p in parts])
        order = torch.argsort(indices, stable=True)
        indices = indices[order]
        keep = torch.ones_like(indices, dtype=torch.bool)
        keep[1:] = indices[1:] != indices[:-1]
        index = order[keep]
        result = {"indices": indices[keep], "predictions": _take(preds, index)}
        atomic_write(merged_path, lambda tmp: torch.save(result, tmp))
        if not self.keep_rank_files:
            for p in rank_paths:
                p.unlink(missing_ok=True)
        loaders = trainer.predict_dataloaders
        dataset = getattr(loaders[k] if isinstance(loaders, list | tuple) else loaders, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and len(result["indices"]) != len(dataset):
            rank_zero_warn(
                f"PredictionWriter wrote {len(result['indices'])} of the {len(dataset)} samples of the predict "
                "dataset (limit_predict_batches or an uneven sampler?)"
            )
