"""Lightning layer for the `finetune` area."""

from lightning_tricks.finetune.freeze_backbone import FreezeBackbone
from lightning_tricks.finetune.parameter_counts import log_parameter_counts
from lightning_tricks.finetune.safe_checkpoint_io import SafeCheckpointIO
from lightning_tricks.finetune.weight_init import WeightInit
from lightning_tricks.finetune.weights_io import ExportWeights

__all__: list[str] = [
    "ExportWeights",
    "FreezeBackbone",
    "SafeCheckpointIO",
    "WeightInit",
    "log_parameter_counts",
]
