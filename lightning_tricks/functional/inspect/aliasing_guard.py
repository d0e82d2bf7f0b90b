"""Find batch tensors that share memory with the dataset
(the functional core of [`AliasingGuard`][lightning_tricks.AliasingGuard]).

The pair: ``AliasingGuard`` calls [`dataset_storages`][lightning_tricks.functional.dataset_storages] once per epoch and
[`find_aliased_tensors`][lightning_tricks.functional.find_aliased_tensors] on the batches it checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_tricks.functional._checks import check_int, describe
from lightning_tricks.functional.inspect._tensors import tensor_leaves, walk_tensors

__all__ = ["dataset_storages", "find_aliased_tensors"]


def dataset_storages(dataset: Any, max_depth: int = 2) -> dict[int, str]:
    """Storage data pointers of the tensors a dataset holds, mapped to a readable name.

    Looks at ``dataset.tensors`` (``TensorDataset``) and at tensors among the dataset's
    attributes (nested up to ``max_depth``), following ``.dataset`` of ``Subset``-like
    wrappers.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.zeros(4, 2))
        >>> list(dataset_storages(ds).values())
        ['dataset.tensors[0]']
    """
    if (
        dataset is None
        or isinstance(dataset, str | bytes | int | float | complex)
        or not (hasattr(dataset, "__getitem__") or hasattr(dataset, "__iter__"))
    ):
        raise TypeError(
            f"`dataset` must be a dataset (an object with __getitem__ or __iter__ holding tensors); got "
            f"{describe(dataset)}"
        )
    max_depth = check_int("max_depth", max_depth, minimum=0)
    out: dict[int, str] = {}
    prefix = "dataset"
    seen = 0
    while dataset is not None and seen < 4:
        attrs = vars(dataset) if hasattr(dataset, "__dict__") else {}
        for attr, value in attrs.items():
            for path, t in walk_tensors(value, f"{prefix}.{attr}", max_depth, [10_000]):
                if t.numel() > 0:
                    out.setdefault(t.untyped_storage().data_ptr(), path)
        dataset = attrs.get("dataset")
        prefix += ".dataset"
        seen += 1
    return out


def find_aliased_tensors(batch: Any, storages: dict[int, str]) -> list[tuple[str, torch.Tensor, str]]:
    """The tensors of ``batch`` that share storage with the dataset (see [`dataset_storages`][lightning_tricks.functional.dataset_storages]).

    Args:
        batch: a tensor or nested lists/tuples/dicts of them.
        storages: what [`dataset_storages`][lightning_tricks.functional.dataset_storages] returned.

    Returns:
        ``(batch_path, tensor, dataset_name)`` for each aliased tensor.

    Raises:
        TypeError: ``storages`` is not a mapping (of storage pointers to names).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(8.0).reshape(4, 2))
        >>> batch = (ds.tensors[0].narrow(0, 0, 2), torch.zeros(2))  # a view and a copy
        >>> for path, _, name in find_aliased_tensors(batch, dataset_storages(ds)):
        ...     print(path, "aliases", name)
        batch[0] aliases dataset.tensors[0]
    """
    if not isinstance(storages, Mapping):  # the entries are not checked: this runs on training steps
        raise TypeError(
            f"`storages` must map storage pointers (ints) to names, as dataset_storages() returns; "
            f"got {describe(storages)}"
        )
    out = []
    for path, t in tensor_leaves(batch):
        if t.numel() == 0:
            continue
        name = storages.get(t.untyped_storage().data_ptr())
        if name is not None:
            out.append((path, t, name))
    return out
