"""Predictions of several ranks merged into one file: every sample once, in dataset order.

The functional core of [`PredictionWriter`][lightning_tricks.PredictionWriter]: each process saves
its rows with their dataset indices ([`save_rank_predictions`][lightning_tricks.functional.save_rank_predictions]), then one process
merges the files ([`merge_rank_predictions`][lightning_tricks.functional.merge_rank_predictions]) and anyone reads the result with
[`load_predictions`][lightning_tricks.functional.load_predictions]. Usable from Lightning Fabric or a hand-written loop; the
callback only decides when each step runs and on which rank.

A payload is ``{"indices": LongTensor (N,), "predictions": tensor | dict | list of
tensors}``, one row per sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_tricks.functional._io import atomic_write

__all__ = [
    "load_predictions",
    "merge_predictions",
    "merge_rank_predictions",
    "prediction_to_cpu",
    "save_rank_predictions",
]

PathLike = str | os.PathLike[str]


def prediction_to_cpu(prediction: Any, num_rows: int | None = None) -> Any:
    """``prediction`` detached on the CPU, checked to hold ``num_rows`` rows.

    Args:
        prediction: a tensor, or a dict/list/tuple of tensors (nested), as ``predict_step``
            returns it.
        num_rows: the number of samples of the batch; ``None`` skips the check.

    Returns:
        The same structure with CPU tensors (tuples become lists).

    Raises:
        TypeError: for anything but tensors, dicts, lists and tuples.
        ValueError: if a tensor's leading size is not ``num_rows``.

    Example:
        >>> prediction_to_cpu({"logits": torch.zeros(2, 3)}, num_rows=2)["logits"].shape
        torch.Size([2, 3])
    """
    out = _to_cpu(prediction)
    if num_rows is not None:
        rows = _rows(out)
        if rows != {num_rows}:
            raise ValueError(
                f"predict_step must return one row per sample: the batch has {num_rows} samples but the "
                f"prediction has leading sizes {sorted(rows)}"
            )
    return out


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_cpu(v) for v in obj]
    raise TypeError(
        f"predictions can be tensors, dicts and lists of tensors; predict_step returned {type(obj).__name__}"
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


def save_rank_predictions(path: PathLike, batches: Sequence[tuple[torch.Tensor, Any]]) -> None:
    """Save one process's ``(indices, prediction)`` batches as one payload (atomically).

    Args:
        path: the file to write (e.g. ``predictions.rank0.pt``).
        batches: per batch, the dataset indices ``(n,)`` and the CPU prediction with ``n``
            rows (see `prediction_to_cpu`); may be empty.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r0.pt"
        >>> save_rank_predictions(p, [(torch.tensor([3, 1]), torch.zeros(2))])
        >>> load_predictions(p)["indices"]
        tensor([3, 1])
    """
    payload = {
        "indices": torch.cat([i for i, _ in batches]) if batches else torch.zeros(0, dtype=torch.long),
        "predictions": _cat([p for _, p in batches]) if batches else None,
    }
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def merge_predictions(parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Merge payloads into one: rows sorted by dataset index, each index kept once.

    Duplicates (a ``DistributedSampler`` pads the last batch with repeated samples) keep
    their first occurrence in ``parts`` order.

    Args:
        parts: payloads ``{"indices", "predictions"}``; empty ones (``predictions`` None)
            are skipped.

    Returns:
        The merged payload, or ``None`` if every part is empty.

    Example:
        >>> a = {"indices": torch.tensor([2, 0]), "predictions": torch.tensor([20.0, 0.0])}
        >>> b = {"indices": torch.tensor([1, 2]), "predictions": torch.tensor([10.0, 20.0])}
        >>> merge_predictions([a, b])
        {'indices': tensor([0, 1, 2]), 'predictions': tensor([ 0., 10., 20.])}
    """
    parts = [p for p in parts if p["predictions"] is not None]
    if not parts:
        return None
    indices = torch.cat([p["indices"] for p in parts])
    preds = _cat([p["predictions"] for p in parts])
    order = torch.argsort(indices, stable=True)
    indices = indices[order]
    keep = torch.ones_like(indices, dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    return {"indices": indices[keep], "predictions": _take(preds, order[keep])}


def merge_rank_predictions(
    rank_paths: Sequence[PathLike], merged_path: PathLike, *, keep_rank_files: bool = False
) -> dict[str, Any] | None:
    """Merge the files of [`save_rank_predictions`][lightning_tricks.functional.save_rank_predictions] into ``merged_path`` (atomically).

    Args:
        rank_paths: one file per process.
        merged_path: the merged file (read it with [`load_predictions`][lightning_tricks.functional.load_predictions]).
        keep_rank_files: keep the per-rank files (else they are deleted after the merge).

    Returns:
        The merged payload, or ``None`` (and no file) if no rank predicted anything.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> save_rank_predictions(d / "r0.pt", [(torch.tensor([0, 2]), torch.tensor([0.0, 2.0]))])
        >>> save_rank_predictions(d / "r1.pt", [(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))])
        >>> merge_rank_predictions([d / "r0.pt", d / "r1.pt"], d / "all.pt")["indices"]
        tensor([0, 1, 2])
        >>> sorted(p.name for p in d.iterdir())
        ['all.pt']
    """
    paths = [Path(p) for p in rank_paths]
    result = merge_predictions([load_predictions(p) for p in paths])
    if result is None:
        return None
    atomic_write(Path(merged_path), lambda tmp: torch.save(result, tmp))
    if not keep_rank_files:
        for p in paths:
            p.unlink(missing_ok=True)
    return result


def load_predictions(path: PathLike) -> dict[str, Any]:
    """Load a file written by [`PredictionWriter`][lightning_tricks.PredictionWriter] (``weights_only=True``).

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
