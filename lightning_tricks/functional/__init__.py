"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage; this module re-exports their public functions.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# Re-exports, one block per area (keep the blocks apart: several people edit this file).
# finetune
# optim
# inference
# inspect
# perf
from lightning_tricks.functional.perf import (
    apply_gradient_checkpointing,
    batch_to_channels_last,
    compile_modules,
    model_to_channels_last,
    remove_gradient_checkpointing,
    uncompile_modules,
)

# data

# repro

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    # finetune
    # optim
    # inference
    # inspect
    # perf
    "apply_gradient_checkpointing",
    "batch_to_channels_last",
    "compile_modules",
    "model_to_channels_last",
    "remove_gradient_checkpointing",
    "uncompile_modules",
    # data
    # repro
]
