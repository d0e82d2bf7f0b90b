"""Lightning layer for the `optim` area."""

from lightning_tricks.optim.agc import AdaptiveGradientClipping
from lightning_tricks.optim.autoclip import AutoClip
from lightning_tricks.optim.no_bias_decay import NoBiasDecay
from lightning_tricks.optim.target_batch_size import TargetBatchSize

__all__: list[str] = ["AdaptiveGradientClipping", "AutoClip", "NoBiasDecay", "TargetBatchSize"]
