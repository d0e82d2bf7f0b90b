"""Generated, learnable image data: nothing is downloaded."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.models import IMAGE_SHAPE, NUM_CLASSES


def make_image_dataset(n: int = 64, seed: int = 0, num_classes: int = NUM_CLASSES) -> TensorDataset:
    """Images of shape (3, 8, 8) whose class decides which quadrant is bright, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    x = 0.5 * torch.randn(n, *IMAGE_SHAPE, generator=g)
    for c in range(num_classes):
        r, col = divmod(c % 4, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 1.0
    return TensorDataset(x, y)


class ImageDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders over :func:`make_image_dataset`.

    ``shuffle`` is off by default so that runs are exactly reproducible (the
    conformance suite's resume-parity check relies on it).
    """

    def __init__(
        self,
        n_train: int = 64,
        n_val: int = 32,
        batch_size: int = 16,
        shuffle: bool = False,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.shuffle = n_train, n_val, batch_size, shuffle
        self.num_classes = num_classes

    def setup(self, stage: str | None = None) -> None:
        self.train_set = make_image_dataset(self.n_train, seed=0, num_classes=self.num_classes)
        self.val_set = make_image_dataset(self.n_val, seed=1, num_classes=self.num_classes)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)
