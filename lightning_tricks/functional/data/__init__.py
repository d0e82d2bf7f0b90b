"""Pure-PyTorch cores for the `data` area."""

from lightning_tricks.functional.data.split_datamodule import (
    SeededShuffleSampler,
    resolve_split_sizes,
    split_dataset,
    split_indices,
)

__all__: list[str] = ["SeededShuffleSampler", "resolve_split_sizes", "split_dataset", "split_indices"]
