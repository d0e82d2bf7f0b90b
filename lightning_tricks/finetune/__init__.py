"""Lightning layer for the `finetune` area."""

from lightning_tricks.finetune.export_weights import ExportWeights
from lightning_tricks.finetune.weight_init import WeightInit

__all__: list[str] = []

# weights team
__all__ += ["ExportWeights", "WeightInit"]
from lightning_tricks.finetune.freeze_backbone import FreezeBackbone, log_parameter_counts

__all__: list[str] = [
    "FreezeBackbone",
    "log_parameter_counts",
]
