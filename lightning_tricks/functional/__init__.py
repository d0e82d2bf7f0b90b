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
# data
from lightning_tricks.functional.data.splits import (
    SeededShuffleSampler,
    resolve_split_sizes,
    split_dataset,
    split_indices,
)

# repro
from lightning_tricks.functional.repro.checksums import (
    Divergence,
    first_divergence,
    load_checksums,
    save_checksums,
    tensor_checksums,
)
from lightning_tricks.functional.repro.seeds import SeedRecord, freeze_seeds, seed_worker

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    # finetune
    # optim
    # inference
    # inspect
    # perf
    # data
    "SeededShuffleSampler",
    "resolve_split_sizes",
    "split_dataset",
    "split_indices",
    # repro
    "Divergence",
    "SeedRecord",
    "first_divergence",
    "freeze_seeds",
    "load_checksums",
    "save_checksums",
    "seed_worker",
    "tensor_checksums",
]
