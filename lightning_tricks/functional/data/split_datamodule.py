"""Reproducible (optionally stratified) train/val/test splits of a map-style dataset.

The split depends only on the dataset length, the sizes, the labels and the seed (a
private ``torch.Generator``), never on the global RNG, so every process of a
distributed run computes the same split without any communication.

The functional pair of [`SplitDataModule`][lightning_tricks.SplitDataModule]: it splits with
[`split_indices`][lightning_tricks.functional.split_indices] (what [`split_dataset`][lightning_tricks.functional.split_dataset] does for one dataset) and shuffles its
training split with [`SeededShuffleSampler`][lightning_tricks.functional.SeededShuffleSampler].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, Subset

from lightning_tricks.functional._checks import (
    check_bool,
    check_int,
    check_names,
    check_same_length,
    describe,
)

__all__ = ["SeededShuffleSampler", "resolve_split_sizes", "split_dataset", "split_indices"]

Size = int | float | None
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes
_MAX_N = 2**63 - 1  # what torch.randperm takes


def resolve_split_sizes(n: int, sizes: Sequence[Size], names: Sequence[str] | None = None) -> list[int]:
    """Turn fractions (floats in ``[0, 1]``), counts (ints) and one ``None`` ("the rest") into counts.

    Fractions are rounded to the nearest count; when they (with the counts) cover the
    whole dataset exactly, the rounding is corrected (largest remainder) so that the
    counts add up to ``n``.

    Args:
        n: number of samples.
        sizes: one entry per split.
        names: argument names of the entries, for error messages (default ``sizes[i]``).

    Returns:
        One count per split, summing to at most ``n``.

    Raises:
        TypeError: an entry is not an int, float or None.
        ValueError: an entry is negative, a fraction is above 1, more than one entry is
            None, the sizes add up to more than ``n``, or ``names`` has another length
            than ``sizes``.

    Example:
        >>> resolve_split_sizes(10, [0.8, 0.1, 0.1])
        [8, 1, 1]
        >>> resolve_split_sizes(10, [None, 3, 0.25])
        [5, 3, 2]
    """
    n = check_int("n", n, minimum=0, maximum=_MAX_N)
    if not isinstance(sizes, Sequence) or isinstance(sizes, str | bytes):
        raise TypeError(f"`sizes` must be a sequence with one size per split; got {describe(sizes)}")
    if names is None:
        names = [f"sizes[{i}]" for i in range(len(sizes))]
    else:
        names = list(check_names("names", names))
        check_same_length(("sizes", sizes), ("names", names))
    exact: list[float | None] = []
    for name, size in zip(names, sizes):
        if size is None:
            exact.append(None)
        elif isinstance(size, bool) or not isinstance(size, Real):
            raise TypeError(
                f"`{name}` must be a fraction (float in [0, 1]), a count (int >= 0) or None; "
                f"got {size!r} of type {type(size).__name__}"
            )
        elif isinstance(size, Integral):
            if size < 0:
                raise ValueError(f"`{name}` must be a count >= 0 or a fraction in [0, 1]; got {size!r}")
            exact.append(float(size))
        else:
            if not math.isfinite(size) or not 0.0 <= size <= 1.0:
                raise ValueError(f"`{name}` must be a fraction in [0, 1] (or an int count); got {size!r}")
            exact.append(float(size) * n)
    rest = [i for i, e in enumerate(exact) if e is None]
    if len(rest) > 1:
        raise ValueError(
            f"only one split size may be None (the rest); got None for "
            f"{', '.join(f'`{names[i]}`' for i in rest)}"
        )
    counts = [0 if e is None else round(e) for e in exact]
    known = sum(e for e in exact if e is not None)
    if not rest and math.isclose(known, n, abs_tol=1e-6 * max(n, 1)):
        # Largest remainder: the fractions cover the dataset, so the counts must too.
        full = [e for e in exact if e is not None]  # no None here: every entry is known
        floors = [math.floor(e + 1e-9) for e in full]
        order = sorted(range(len(full)), key=lambda i: floors[i] - full[i])
        counts = floors
        for i in order[: n - sum(floors)]:
            counts[i] += 1
    total = sum(counts)
    if total > n:
        detail = ", ".join(f"{name}={size!r}" for name, size in zip(names, sizes))
        raise ValueError(f"split sizes ({detail}) ask for {total} samples; the dataset has only {n}")
    if rest:
        counts[rest[0]] = n - total
    return counts


def split_indices(
    n: int,
    sizes: Sequence[Size],
    *,
    seed: int = 0,
    labels: Sequence[Any] | torch.Tensor | None = None,
    names: Sequence[str] | None = None,
) -> list[list[int]]:
    """Index lists of disjoint random splits of ``range(n)``, reproducible from ``seed``.

    With ``labels``, every split keeps the class proportions of the whole: the splits
    are filled smallest first, each taking from every class its share of what is left
    (largest-remainder rounding), so with two splits each class is within one sample
    of its exact share in both, and within two with three splits.

    Args:
        n: number of samples.
        sizes: per split a fraction, a count, or ``None`` for the rest
            (see [`resolve_split_sizes`][lightning_tricks.functional.resolve_split_sizes]).
        seed: seed of the private generator, ``0 <= seed < 2**64``; the global RNG is
            neither used nor changed.
        labels: optional per-sample class labels (any hashable values) for stratification.
        names: argument names of ``sizes`` entries, for error messages.

    Returns:
        One sorted list of indices per split.

    Raises:
        ValueError: bad sizes, or ``labels`` of the wrong length.
        TypeError: bad argument types.

    Example:
        >>> train, val = split_indices(8, [0.75, None], seed=0)
        >>> len(train), len(val), sorted(train + val) == list(range(8))
        (6, 2, True)
        >>> a, b = split_indices(8, [0.5, 0.5], labels=[0, 0, 0, 0, 1, 1, 1, 1])
        >>> sum(i >= 4 for i in a), sum(i >= 4 for i in b)
        (2, 2)
    """
    counts = resolve_split_sizes(n, sizes, names)
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    if labels is not None and (
        isinstance(labels, str | bytes | Mapping)
        or not isinstance(labels, Sequence | torch.Tensor)
        or (isinstance(labels, torch.Tensor) and labels.ndim == 0)
    ):
        raise TypeError(
            f"`labels` must be a sequence (list, tensor) of per-sample labels or None; got {describe(labels)}"
        )
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        order = torch.randperm(n, generator=g).tolist()
    else:
        keys = labels.tolist() if isinstance(labels, torch.Tensor) else [_label_key(k) for k in labels]
        if len(keys) != n:
            raise ValueError(f"`labels` must have one entry per sample ({n}); got {len(keys)}")
        try:
            by_class: dict[Any, list[int]] = {}
            for i, key in enumerate(keys):
                by_class.setdefault(key, []).append(i)
        except TypeError:
            raise TypeError("`labels` must hold hashable class labels (ints, strings)") from None
        return _stratified(by_class, counts, n, g)
    out, start = [], 0
    for count in counts:
        out.append(sorted(order[start : start + count]))
        start += count
    return out


def _label_key(label: Any) -> Any:
    """A hashable class key: 0-d tensors/numpy scalars by value (tensors hash by identity)."""
    if hasattr(label, "tolist") and not isinstance(label, list):
        value = label.tolist()
        return tuple(value) if isinstance(value, list) else value
    return label


def _stratified(
    by_class: dict[Any, list[int]], counts: list[int], n: int, g: torch.Generator
) -> list[list[int]]:
    """Allocate each class to the splits in proportion (largest remainder), smallest split first."""
    pools = [
        [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
        for members in by_class.values()
    ]
    sizes = [*counts, n - sum(counts)]  # the last entry: samples no split asked for
    order = [*sorted(range(len(counts)), key=lambda s: (sizes[s], s)), len(counts)]
    out: list[list[int]] = [[] for _ in sizes]
    for s in order:
        remaining = sum(len(p) for p in pools)
        if remaining == 0 or sizes[s] == 0:
            continue
        target = [sizes[s] * len(p) / remaining for p in pools]
        take = [math.floor(t) for t in target]
        tie = torch.rand(len(pools), generator=g).tolist()
        by_remainder = sorted(range(len(pools)), key=lambda c: (take[c] - target[c], tie[c]))
        for c in by_remainder[: sizes[s] - sum(take)]:
            take[c] += 1
        for c, k in enumerate(take):
            out[s].extend(pools[c][:k])
            pools[c] = pools[c][k:]
    return [sorted(part) for part in out[: len(counts)]]


_LABELS_ALLOWED = (
    "a sequence of labels (list, tuple, tensor, numpy array), the name of a dataset attribute "
    "holding them, the index of the label in each sample, or a callable sample -> label"
)


def _is_array_like(labels: Any) -> bool:
    """A list/tuple/tensor/numpy array (anything sized with ``tolist``), not a string."""
    if isinstance(labels, str | bytes):
        return False
    if isinstance(labels, torch.Tensor):
        return labels.ndim >= 1
    return isinstance(labels, Sequence) or (
        hasattr(labels, "tolist") and hasattr(labels, "__len__") and getattr(labels, "ndim", 1) >= 1
    )


def _check_labels(dataset: Any, labels: Any) -> Any:
    """Validate ``labels`` without loading samples: the forms [`split_dataset`][lightning_tricks.functional.split_dataset] accepts.

    Raises:
        TypeError: ``labels`` is of none of the accepted forms.
        ValueError: a sequence of the wrong length, or an attribute name the dataset lacks.
    """
    if labels is None:
        return None
    if isinstance(labels, str):
        if not hasattr(dataset, labels):
            raise ValueError(f"`labels` names no attribute {labels!r} of the {type(dataset).__name__}")
        return labels
    if isinstance(labels, Integral) and not isinstance(labels, bool):
        return labels
    if _is_array_like(labels):
        if len(labels) != len(dataset):
            raise ValueError(f"`labels` must have one entry per sample ({len(dataset)}); got {len(labels)}")
        return labels
    if callable(labels) and not isinstance(labels, type):
        return labels
    raise TypeError(f"`labels` must be {_LABELS_ALLOWED}; got {labels!r:.60} of type {type(labels).__name__}")


def _dataset_labels(dataset: Any, labels: Any) -> Any:
    """Resolve ``labels`` given as a sequence, attribute name, sample index or callable."""
    if labels is None or isinstance(labels, torch.Tensor):
        return labels
    if isinstance(labels, str):
        if not hasattr(dataset, labels):
            raise ValueError(f"`labels` names no attribute {labels!r} of the {type(dataset).__name__}")
        return _dataset_labels(dataset, getattr(dataset, labels))
    if isinstance(labels, Integral) and not isinstance(labels, bool):
        index = int(labels)
        tensors = getattr(dataset, "tensors", None)  # TensorDataset: no need to load samples
        if isinstance(tensors, tuple) and -len(tensors) <= index < len(tensors):
            return tensors[index]
        try:
            return [dataset[i][index] for i in range(len(dataset))]
        except (IndexError, KeyError, TypeError) as err:
            raise ValueError(f"`labels`={labels} is not a valid index into the samples: {err}") from None
    if _is_array_like(labels):
        return labels.tolist() if hasattr(labels, "tolist") else labels
    if callable(labels) and not isinstance(labels, type):
        out = []
        for i in range(len(dataset)):
            sample = dataset[i]
            try:
                out.append(labels(sample))
            except Exception as err:  # the user's function: say which argument and sample
                raise ValueError(
                    f"`labels` (a function sample -> label) failed on sample {i}: {err!r}"
                ) from err
        return out
    raise TypeError(f"`labels` must be {_LABELS_ALLOWED}; got {labels!r:.60} of type {type(labels).__name__}")


def split_dataset(
    dataset: Dataset,
    sizes: Sequence[Size],
    *,
    seed: int = 0,
    labels: Sequence[Any] | torch.Tensor | str | int | Callable[[Any], Any] | None = None,
) -> list[Subset]:
    """Split a map-style dataset into `torch.utils.data.Subset` s (see [`split_indices`][lightning_tricks.functional.split_indices]).

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).
        sizes: per split a fraction, a count, or ``None`` for the rest.
        seed: seed of the private generator.
        labels: for stratification: per-sample labels, the name of a dataset attribute
            holding them (``"targets"``), the index of the label in each sample (``1``
            for ``(x, y)`` samples), or a callable ``sample -> label``.

    Returns:
        One ``Subset`` per split.

    Raises:
        TypeError: ``dataset`` is not map-style, or a bad argument type.
        ValueError: bad sizes or labels.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(10.0), torch.arange(10) % 2)
        >>> train, val = split_dataset(ds, [0.8, 0.2], labels=1, seed=3)
        >>> len(train), len(val), sorted(int(y) for _, y in val)
        (8, 2, [0, 1])
    """
    if isinstance(dataset, IterableDataset) or not (
        hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    ):
        raise TypeError(
            "`dataset` must be a map-style dataset (with __getitem__ and __len__); "
            f"got {type(dataset).__name__}"
        )
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(
            f"`dataset` must be a map-style dataset with a length; got {describe(dataset)}"
        ) from None
    resolve_split_sizes(n, sizes)  # the sizes and the seed first: before any sample is read
    check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    labels = _check_labels(dataset, labels)
    indices = split_indices(len(dataset), sizes, seed=seed, labels=_dataset_labels(dataset, labels))
    return [Subset(dataset, idx) for idx in indices]


class SeededShuffleSampler(Sampler[int]):
    """Shuffles ``range(n)`` anew each epoch from ``seed + epoch``: reproducible and resumable.

    Unlike ``shuffle=True`` (which draws from the global RNG), the order of epoch ``e``
    depends only on ``seed`` and ``e``; Lightning (and any loop that calls
    ``set_epoch``, like for ``DistributedSampler``) selects the epoch, so a run resumed
    from a checkpoint sees the same batches as one that never stopped.

    Args:
        n: number of samples.
        seed: base seed, ``0 <= seed < 2**64``.
        shuffle: ``False`` yields ``0..n-1`` in order.

    Example:
        >>> s = SeededShuffleSampler(5, seed=1)
        >>> first = list(s); s.set_epoch(1); second = list(s)
        >>> sorted(first) == list(range(5)), first != second
        (True, True)
        >>> s.set_epoch(0); list(s) == first
        True
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = check_int("n", n, minimum=0, maximum=_MAX_N)
        self.seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        self.shuffle = check_bool("shuffle", shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed((self.seed + self.epoch) % 2**64)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
