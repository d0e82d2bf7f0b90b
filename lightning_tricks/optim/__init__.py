"""Lightning layer for the `optim` area."""

from lightning_tricks.optim.gradient_clipping import AdaptiveGradientClipping, AutoClip
from lightning_tricks.optim.no_bias_decay import NoBiasDecay
from lightning_tricks.optim.target_batch_size import TargetBatchSize

__all__: list[str] = ["AdaptiveGradientClipping", "AutoClip", "NoBiasDecay", "TargetBatchSize"]
