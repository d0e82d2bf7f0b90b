"""Generated, learnable image data (from ``lightning_tricks.demos``): nothing is downloaded."""

from __future__ import annotations

from lightning_tricks.demos import ImageDataModule, make_image_dataset

__all__ = ["ImageDataModule", "make_image_dataset"]
