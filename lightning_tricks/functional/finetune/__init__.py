"""Pure-PyTorch cores for the `finetune` area."""

from lightning_tricks.functional.finetune.freeze import (
    batchnorm_eval,
    freeze_modules,
    select_modules,
    unfreeze_modules,
    unfreeze_units,
)
from lightning_tricks.functional.finetune.params import count_parameters

__all__: list[str] = [
    "batchnorm_eval",
    "count_parameters",
    "freeze_modules",
    "select_modules",
    "unfreeze_modules",
    "unfreeze_units",
]
