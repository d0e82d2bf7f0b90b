"""Pure-PyTorch cores for the `repro` area."""

from lightning_tricks.functional.repro.reproducibility_check import (
    Divergence,
    first_divergence,
    load_checksums,
    save_checksums,
    tensor_checksums,
)
from lightning_tricks.functional.repro.seeds import SeedRecord, freeze_seeds, seed_worker

__all__: list[str] = [
    "Divergence",
    "SeedRecord",
    "first_divergence",
    "freeze_seeds",
    "load_checksums",
    "save_checksums",
    "seed_worker",
    "tensor_checksums",
]
