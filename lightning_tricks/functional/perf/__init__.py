"""Pure-PyTorch cores for the `perf` area."""

__all__: list[str] = []

# perfspeed
from lightning_tricks.functional.perf.channels_last import (
    batch_to_channels_last,
    model_to_channels_last,
)
from lightning_tricks.functional.perf.checkpointing import (
    apply_gradient_checkpointing,
    remove_gradient_checkpointing,
)
from lightning_tricks.functional.perf.compile import compile_modules, uncompile_modules

__all__ += [
    "apply_gradient_checkpointing",
    "batch_to_channels_last",
    "compile_modules",
    "model_to_channels_last",
    "remove_gradient_checkpointing",
    "uncompile_modules",
]
