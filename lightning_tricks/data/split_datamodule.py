"""A LightningDataModule that splits one map-style dataset into train/val/test."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset

from lightning_tricks._compat import training_batches_completed
from lightning_tricks.functional._checks import check_bool, check_int, check_optional_int
from lightning_tricks.functional.data.split_datamodule import (
    SeededShuffleSampler,
    _check_labels,
    _dataset_labels,
    resolve_split_sizes,
    split_indices,
)

__all__ = ["SplitDataModule"]

_SPLITS = ("train", "val", "test")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class SplitDataModule(L.LightningDataModule):
    """Train/val/test splits of any map-style dataset, reproducible from a seed, with good loaders.

    The split is computed from ``seed`` alone (never the global RNG), so it is the same on
    every DDP rank and in every run; with ``labels`` it is stratified. Training batches
    are shuffled per epoch from ``seed + epoch`` (a resumed run sees the same batches);
    under DDP a ``DistributedSampler`` seeded with ``seed`` then partitions the training
    split across ranks.

    Loader defaults follow common practice and can each be overridden: ``num_workers``
    the CPUs available to this process divided by the processes per node (at most
    ``max_workers``), ``pin_memory`` when training on CUDA, ``persistent_workers``
    whenever there are workers.

    The checkpoint stores a fingerprint of the split; resuming with a different split
    (another seed, sizes or dataset) raises instead of silently mixing data.

    Args:
        dataset: the map-style dataset to split (in a LightningCLI YAML, give it as
            ``class_path``/``init_args``).
        train: training split: a fraction in ``[0, 1]``, a count, or ``None`` for the rest.
        val: validation split, likewise.
        test: test split, likewise (``0`` for none).
        labels: stratify by these labels: one label per sample (a list, tuple, tensor or
            numpy array), the name of a dataset attribute holding them (``"targets"``),
            the index of the label in each sample (``1`` for ``(x, y)`` samples), or a
            callable ``sample -> label`` (it loads every sample once). The same forms
            as [`split_dataset`][lightning_tricks.functional.split_dataset]. ``None``: plain random.
        seed: seed of the split and of the per-epoch shuffling.
        batch_size: training batch size.
        eval_batch_size: batch size of the val/test/predict loaders (default ``batch_size``).
        shuffle: shuffle the training split each epoch.
        drop_last: drop the last incomplete training batch.
        num_workers: loader worker processes; ``None`` for the automatic default.
        max_workers: cap of the automatic ``num_workers``.
        pin_memory: ``None``: when CUDA is available and the trainer (if any) trains on it.
        persistent_workers: ``None``: whenever ``num_workers > 0``.

    Raises:
        TypeError: ``dataset`` is not map-style, or an argument has the wrong type.
        ValueError: sizes that do not fit the dataset, labels of the wrong length, or
            ``persistent_workers=True`` with ``num_workers=0``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.randn(20, 3), torch.arange(20) % 2)
        >>> dm = SplitDataModule(ds, val=0.2, test=0.1, labels=1, batch_size=4, num_workers=0)
        >>> dm.setup("fit")
        >>> tuple(len(s) for s in (dm.train_set, dm.val_set, dm.test_set))
        (14, 4, 2)
        >>> next(iter(dm.train_dataloader()))[0].shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        dataset: Dataset,
        train: int | float | None = None,
        val: int | float | None = 0.1,
        test: int | float | None = 0,
        labels: int | str | Sequence[Any] | Callable[[Any], Any] | None = None,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int | None = None,
        max_workers: int = 8,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        if (
            isinstance(dataset, IterableDataset | str | bytes | dict)
            or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"))
            or not isinstance(dataset, Dataset | Sequence)
        ):
            raise TypeError(
                "`dataset` must be a map-style dataset (a torch Dataset with __getitem__ and __len__); "
                f"got {type(dataset).__name__}"
            )
        n = len(dataset)
        if n == 0:
            raise ValueError("`dataset` is empty; a split needs at least one sample")
        self.sizes = resolve_split_sizes(n, [train, val, test], names=_SPLITS)
        if self.sizes[0] == 0:
            raise ValueError(f"`train` split is empty (train={train!r}, val={val!r}, test={test!r}, n={n})")
        _check_labels(dataset, labels)  # the same forms as `split_dataset`
        self.dataset = dataset
        self.train, self.val, self.test = train, val, test
        self.labels = labels
        self.seed = check_int("seed", seed, minimum=0)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.eval_batch_size = check_optional_int("eval_batch_size", eval_batch_size, minimum=1)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        self._resume_epoch: int | None = None  # from a checkpoint: the epoch the first loader serves
        self.num_workers = check_optional_int("num_workers", num_workers, minimum=0)
        self.max_workers = check_int("max_workers", max_workers, minimum=0)
        self.pin_memory = None if pin_memory is None else check_bool("pin_memory", pin_memory)
        self.persistent_workers = (
            None if persistent_workers is None else check_bool("persistent_workers", persistent_workers)
        )
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError("`persistent_workers=True` needs worker processes; got `num_workers=0`")
        self._indices: list[list[int]] | None = None

    # ------------------------------------------------------------------ the split
    @property
    def split_indices(self) -> list[list[int]]:
        """The train, val and test index lists (computed once, identical on every rank)."""
        if self._indices is None:
            labels = _dataset_labels(self.dataset, self.labels)
            self._indices = split_indices(
                len(self.dataset), self.sizes, seed=self.seed, labels=labels, names=_SPLITS
            )
        return self._indices

    def fingerprint(self) -> str:
        """A short hash of the split indices (stored in checkpoints)."""
        digest = hashlib.sha256(repr(self.split_indices).encode()).hexdigest()
        return digest[:16]

    def setup(self, stage: str | None = None) -> None:
        train, val, test = self.split_indices
        self.train_set = Subset(self.dataset, train)
        self.val_set = Subset(self.dataset, val)
        self.test_set = Subset(self.dataset, test)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "split_fingerprint": self.fingerprint(),
            "sizes": list(self.sizes),
            "seed": self.seed,
        }
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            # The epoch a fit resumed from this checkpoint trains next: the current one, or the
            # following one once all its training batches are done (a checkpoint at the epoch's end).
            done = training_batches_completed(trainer) >= trainer.num_training_batches
            state["next_epoch"] = trainer.current_epoch + int(done)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("split_fingerprint")
        if saved is not None and saved != self.fingerprint():
            raise ValueError(
                "the checkpoint was trained on a different split (saved sizes "
                f"{state_dict.get('sizes')}, seed {state_dict.get('seed')}; now sizes {self.sizes}, "
                f"seed {self.seed}): resuming would mix validation/test samples into training. "
                "Use the same `dataset`, `train`/`val`/`test`, `labels` and `seed` as the original run."
            )
        next_epoch = state_dict.get("next_epoch")
        self._resume_epoch = int(next_epoch) if next_epoch is not None else None

    # ------------------------------------------------------------------ loaders
    def loader_kwargs(self) -> dict[str, Any]:
        """The resolved ``num_workers``, ``pin_memory`` and ``persistent_workers``."""
        trainer = self.trainer
        workers = self.num_workers
        if workers is None:
            per_node = max(1, int(getattr(trainer, "num_devices", 1) or 1)) if trainer else 1
            workers = min(self.max_workers, max(0, _cpu_count() // per_node))
        pin = self.pin_memory
        if pin is None:
            on_cuda = trainer is None or getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"
            pin = torch.cuda.is_available() and on_cuda
        persistent = workers > 0 if self.persistent_workers is None else self.persistent_workers
        if persistent and workers == 0:
            persistent = False  # automatic worker count came out 0: nothing to keep alive
        return {"num_workers": workers, "pin_memory": pin, "persistent_workers": persistent}

    def _loader(self, subset: Subset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(subset, batch_size=batch_size, **self.loader_kwargs(), **kwargs)

    def _check_setup(self) -> None:
        if not hasattr(self, "train_set"):
            self.setup()

    def train_dataloader(self) -> DataLoader:
        self._check_setup()
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and trainer.distributed_sampler_kwargs:
            sampler: Any = DistributedSampler(
                self.train_set,
                shuffle=self.shuffle,
                seed=self.seed,
                drop_last=self.drop_last,
                **trainer.distributed_sampler_kwargs,
            )
        else:
            sampler = SeededShuffleSampler(len(self.train_set), seed=self.seed, shuffle=self.shuffle)
        # Lightning makes a fit's first iterator before it sets the sampler's epoch, and worker
        # processes draw indices as soon as it exists: set the epoch this loader will serve now,
        # or a resumed run with workers replays epoch 0's order in its first epoch.
        epoch = (
            self._resume_epoch
            if self._resume_epoch is not None
            else (trainer.current_epoch if trainer else 0)
        )
        self._resume_epoch = None
        sampler.set_epoch(epoch)
        return self._loader(self.train_set, self.batch_size, sampler=sampler, drop_last=self.drop_last)

    def _eval_loader(self, subset: Subset) -> DataLoader | list:
        if len(subset) == 0:
            return []
        return self._loader(subset, self.eval_batch_size or self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        self._check_setup()
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader | list:
        self._check_setup()
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader | list:
        self._check_setup()
        return self._eval_loader(self.test_set if len(self.test_set) else self.val_set)
