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

from lightning_tricks.functional._checks import check_bool, check_path, describe
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

    Raises:
        TypeError: ``path`` is not a path, ``batches`` not a sequence of ``(indices,
            prediction)`` pairs, indices not an integer tensor or a prediction not tensors
            in dicts and lists.
        ValueError: indices not 1-D, a prediction without one row per index, or batches
            whose predictions differ in structure (keys, lengths, trailing shapes).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r0.pt"
        >>> save_rank_predictions(p, [(torch.tensor([3, 1]), torch.zeros(2))])
        >>> load_predictions(p)["indices"]
        tensor([3, 1])
    """
    path = check_path("path", path)
    if not isinstance(batches, Sequence) or isinstance(batches, str | bytes):
        raise TypeError(
            f"`batches` must be a sequence of (indices, prediction) pairs; got {describe(batches)}"
        )
    layout = None
    for i, item in enumerate(batches):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError(f"`batches[{i}]` must be an (indices, prediction) pair; got {describe(item)}")
        _check_indices(f"batches[{i}][0]", item[0])
        layout = _check_rows(f"batches[{i}][1]", item[1], len(item[0]), layout, "`batches[0][1]`")
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

    Every file is read and checked before anything is written or deleted.

    Args:
        rank_paths: one file per process (a lone path is one file).
        merged_path: the merged file (read it with [`load_predictions`][lightning_tricks.functional.load_predictions]).
        keep_rank_files: keep the per-rank files (else they are deleted after the merge).

    Returns:
        The merged payload, or ``None`` (and no file) if no rank predicted anything.

    Raises:
        TypeError: a path that is not a ``str``/``os.PathLike``, or ``keep_rank_files`` not a bool.
        ValueError: ``merged_path`` is one of ``rank_paths``, a rank file does not exist or
            is not a predictions file, or the files' predictions differ in structure.

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
    if isinstance(rank_paths, str | os.PathLike):
        rank_paths = [rank_paths]
    if not isinstance(rank_paths, Sequence) or isinstance(rank_paths, bytes):
        raise TypeError(f"`rank_paths` must be a path or a sequence of paths; got {describe(rank_paths)}")
    names = [check_path(f"rank_paths[{i}]", p) for i, p in enumerate(rank_paths)]
    paths = [Path(p) for p in names]
    merged = Path(check_path("merged_path", merged_path))
    check_bool("keep_rank_files", keep_rank_files)
    if any(p.resolve() == merged.resolve() for p in paths):
        raise ValueError(
            f"`merged_path` must not be one of `rank_paths` (the rank files may be deleted after the merge); "
            f"got {merged_path!r}"
        )
    parts = [_load_payload(p, f"rank_paths[{i}]", ValueError) for i, p in enumerate(names)]
    layout = None
    for i, part in enumerate(parts):
        if part["predictions"] is not None:
            layout = _check_rows(
                f"rank_paths[{i}]", part["predictions"], len(part["indices"]), layout, "the first rank file"
            )
    result = merge_predictions(parts)
    if result is None:
        return None
    atomic_write(merged, lambda tmp: torch.save(result, tmp))
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

    Raises:
        TypeError: ``path`` is not a ``str``/``os.PathLike`` (file descriptors are refused).
        ValueError: the file is not a predictions file (unreadable, or not such a payload).
        FileNotFoundError: there is no such file.

    Example:
        >>> import tempfile, torch, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.pt"
        >>> torch.save({"indices": torch.arange(2), "predictions": torch.zeros(2)}, p)
        >>> load_predictions(p)["indices"]
        tensor([0, 1])
    """
    return _load_payload(check_path("path", path), "path")


def _load_payload(name: str, arg: str, missing: type[Exception] = FileNotFoundError) -> dict[str, Any]:
    """Read and check a payload; errors name ``arg`` and the file (``missing`` when there is none)."""
    path = Path(name)
    if not path.is_file():
        raise missing(f"`{arg}` names no file: {name}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"`{arg}` {str(path)!r} is not a predictions file (torch.load failed with {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(payload, dict) or set(payload) != {"indices", "predictions"}:
        keys = sorted(map(str, payload)) if isinstance(payload, dict) else None
        raise ValueError(
            f"`{arg}` {str(path)!r} is not a predictions file: expected a dict with 'indices' and 'predictions'; "
            f"got {describe(payload) if keys is None else f'a dict with keys {keys}'}"
        )
    try:
        _check_indices("indices", payload["indices"])
        if payload["predictions"] is not None:
            _check_rows("predictions", payload["predictions"], len(payload["indices"]), None, "")
        elif len(payload["indices"]):
            raise ValueError(f"`predictions` is None but there are {len(payload['indices'])} indices")
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{arg}` {str(path)!r} is not a predictions file: {err}") from None
    return payload


def _check_indices(arg: str, indices: Any) -> None:
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
        raise TypeError(f"`{arg}` must be an integer tensor of dataset indices; got {describe(indices)}")
    if indices.dtype == torch.bool or indices.ndim != 1:
        raise ValueError(f"`{arg}` must be a 1-D integer tensor of dataset indices; got {describe(indices)}")


def _layout(obj: Any) -> Any:
    """The structure of a prediction that concatenation needs to agree: keys, lengths, trailing shapes."""
    if isinstance(obj, torch.Tensor):
        return tuple(obj.shape[1:])
    if isinstance(obj, dict):
        return {k: _layout(v) for k, v in obj.items()}
    return [_layout(v) for v in obj]


def _check_rows(arg: str, prediction: Any, rows: int, layout: Any, first: str) -> Any:
    """Check that ``prediction`` holds tensors (in dicts and lists), each with ``rows`` rows and the
    structure ``layout`` (of ``first``) if given; return its layout."""
    try:
        found = _rows(_walk(prediction))
    except TypeError as err:
        raise TypeError(f"`{arg}` must be tensors in dicts and lists; {err}") from None
    if found != {rows}:
        raise ValueError(
            f"`{arg}` must have one row per index ({rows}); got leading sizes {sorted(found) or 'none'}"
        )
    own = _layout(prediction)
    if layout is not None and own != layout:
        raise ValueError(
            f"`{arg}` differs in structure from {first} (keys, lengths or trailing shapes): {own} vs {layout}"
        )
    return own


def _walk(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: _walk(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_walk(v) for v in obj]
    raise TypeError(f"got {describe(obj)}")
