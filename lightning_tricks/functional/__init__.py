"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage; this module re-exports their public functions.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# Re-exports, one block per area (keep the blocks apart: several people edit this file).
# finetune
# optim
from lightning_tricks.functional.optim import (
    AutoClipper,
    ClipResult,
    WindowMean,
    accumulation_steps,
    adaptive_clip_grad_,
    unitwise_norm,
)

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
    # optim
    "AutoClipper",
    "ClipResult",
    "WindowMean",
    "accumulation_steps",
    "adaptive_clip_grad_",
    "unitwise_norm",
    # inference
    # inspect
    # perf
    # data
    # repro
]
