"""lightning-tricks: training tricks as PyTorch Lightning callbacks, mixins and plugins.

The Lightning layer is imported lazily, so that ``import lightning_tricks.functional``
works on a machine without Lightning. Every public name is listed twice below: in
``__all__`` (what is public) and in ``_EXPORTS`` (the module that defines it). A test
checks that the two agree and that every name resolves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it. Keep one block per area, sorted within the block.
_EXPORTS: dict[str, str] = {
    # base
    "LightningMixin": "lightning_tricks._base",
    # finetune
    # optim
    # inference
    # inspect
    # perf
    "ChannelsLast": "lightning_tricks.perf.channels_last",
    "Compile": "lightning_tricks.perf.compile",
    "DataStallMonitor": "lightning_tricks.perf.data_stall_monitor",
    "GradientCheckpointing": "lightning_tricks.perf.gradient_checkpointing",
    "gpu_trainer": "lightning_tricks.perf.gpu_trainer",
    "gpu_trainer_kwargs": "lightning_tricks.perf.gpu_trainer",
    # data
    # repro
}

__all__ = [
    "__version__",
    "functional",
    # base
    "LightningMixin",
    # finetune
    # optim
    # inference
    # inspect
    # perf
    "ChannelsLast",
    "Compile",
    "DataStallMonitor",
    "GradientCheckpointing",
    "gpu_trainer",
    "gpu_trainer_kwargs",
    # data
    # repro
]


def __getattr__(name: str) -> Any:
    if name == "functional":
        return importlib.import_module("lightning_tricks.functional")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_tricks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_tricks import functional
    from lightning_tricks._base import LightningMixin
