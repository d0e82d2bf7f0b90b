"""Pure-PyTorch cores for the `repro` area."""

from lightning_tricks.functional.repro.exact_resume import (
    capture_rng_state,
    gather_rng_states,
    restore_rng_state,
)
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
    "capture_rng_state",
    "first_divergence",
    "freeze_seeds",
    "gather_rng_states",
    "load_checksums",
    "restore_rng_state",
    "save_checksums",
    "seed_worker",
    "tensor_checksums",
]
