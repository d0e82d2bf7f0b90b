"""Test helpers of the `repro` team: a YAML-constructible map-style dataset.

``tests/helpers`` is shared and frozen; this module adds what the conformance settings
of :class:`~lightning_tricks.SplitDataModule` need: a dataset a LightningCLI config can
build from ``class_path``/``init_args``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from tests.helpers import make_image_dataset


class ImageDataset(Dataset):
    """``n`` images (3, 8, 8) of 4 classes from :func:`tests.helpers.make_image_dataset`, as ``(x, y)``."""

    def __init__(self, n: int = 96, seed: int = 0):
        data = make_image_dataset(n, seed=seed)
        self.images, self.targets = data.tensors

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]
