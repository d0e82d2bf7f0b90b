"""The tiny test models: those of ``lightning_tricks.demos`` (which the docs use too), plus
``make_mlp``. Every model takes images of shape (B, 3, 8, 8) and has a ``backbone`` and a
``head`` submodule, so that every trick can be tried on each."""

from __future__ import annotations

from lightning_tricks.demos import (
    IMAGE_SHAPE,
    MLP,
    MODELS,
    NUM_CLASSES,
    BlockNet,
    ClassifierModule,
    MeanPoolHead,
    PatchEmbed,
    ResidualBlock,
    SmallCNN,
)

__all__ = [
    "IMAGE_SHAPE",
    "MLP",
    "MODELS",
    "NUM_CLASSES",
    "BlockNet",
    "ClassifierModule",
    "MeanPoolHead",
    "PatchEmbed",
    "ResidualBlock",
    "SmallCNN",
    "make_mlp",
]


def make_mlp(hidden: int = 32, num_classes: int = NUM_CLASSES) -> MLP:
    return MLP(hidden=hidden, num_classes=num_classes)
