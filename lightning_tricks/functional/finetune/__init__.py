"""Pure-PyTorch cores for the `finetune` area."""

from lightning_tricks.functional.finetune.freeze_backbone import (
    batchnorm_eval,
    freeze_modules,
    select_modules,
    set_train_mode,
    unfreeze_into_optimizer,
    unfreeze_modules,
    unfreeze_units,
)
from lightning_tricks.functional.finetune.heads import find_head, replace_head, strip_head
from lightning_tricks.functional.finetune.parameter_counts import count_parameters
from lightning_tricks.functional.finetune.safe_checkpoint_io import (
    UnsafeCheckpointError,
    convert_checkpoint,
    is_safe_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lightning_tricks.functional.finetune.weight_init import InitReport, init_weights
from lightning_tricks.functional.finetune.weights_io import (
    LoadReport,
    load_weights,
    read_weights,
    save_weights,
)

__all__: list[str] = [
    "InitReport",
    "LoadReport",
    "UnsafeCheckpointError",
    "batchnorm_eval",
    "convert_checkpoint",
    "count_parameters",
    "find_head",
    "freeze_modules",
    "init_weights",
    "is_safe_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_weights",
    "replace_head",
    "save_checkpoint",
    "save_weights",
    "select_modules",
    "set_train_mode",
    "strip_head",
    "unfreeze_into_optimizer",
    "unfreeze_modules",
    "unfreeze_units",
]
