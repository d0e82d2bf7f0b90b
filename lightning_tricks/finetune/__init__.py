"""Lightning layer for the `finetune` area."""

from lightning_tricks.finetune.freeze_backbone import FreezeBackbone, log_parameter_counts

__all__: list[str] = [
    "FreezeBackbone",
    "log_parameter_counts",
]
