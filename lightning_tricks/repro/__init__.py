"""Lightning layer for the `repro` area."""

from lightning_tricks.functional.repro.seeds import freeze_seeds
from lightning_tricks.repro.exact_resume import ExactResume
from lightning_tricks.repro.reproducibility_check import ReproducibilityCheck

__all__: list[str] = ["ExactResume", "ReproducibilityCheck", "freeze_seeds"]
