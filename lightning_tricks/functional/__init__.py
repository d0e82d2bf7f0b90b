"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage; this module re-exports their public functions.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# Re-exports, one block per area (keep the blocks apart: several people edit this file).
# finetune
from lightning_tricks.functional.finetune.freeze import (
    batchnorm_eval,
    freeze_modules,
    select_modules,
    unfreeze_modules,
    unfreeze_units,
)
from lightning_tricks.functional.finetune.params import count_parameters

# optim
from lightning_tricks.functional.optim.no_bias_decay import (
    no_bias_decay_groups,
    no_weight_decay_names,
    split_by_weight_decay,
)
from lightning_tricks.functional.optim.param_groups import add_param_groups, split_param_groups

# inference

# inspect

# perf

# data

# repro

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    # finetune
    "batchnorm_eval",
    "count_parameters",
    "freeze_modules",
    "select_modules",
    "unfreeze_modules",
    "unfreeze_units",
    # optim
    "add_param_groups",
    "no_bias_decay_groups",
    "no_weight_decay_names",
    "split_by_weight_decay",
    "split_param_groups",
    # inference
    # inspect
    # perf
    # data
    # repro
]
