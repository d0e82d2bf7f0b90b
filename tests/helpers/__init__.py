"""Small models, datamodules and utilities shared by the test-suite."""

from tests.helpers.data import ImageDataModule, make_image_dataset
from tests.helpers.models import (
    MODELS,
    BlockNet,
    ClassifierModule,
    SmallCNN,
    make_mlp,
)
from tests.helpers.utils import cpu_trainer, params_equal, state_of

__all__ = [
    "MODELS",
    "BlockNet",
    "ClassifierModule",
    "ImageDataModule",
    "SmallCNN",
    "cpu_trainer",
    "make_image_dataset",
    "make_mlp",
    "params_equal",
    "state_of",
]
