"""Lightning layer for the `optim` area."""

# optim team: gradient clipping and accumulation
from lightning_tricks.optim.gradient_clipping import AdaptiveGradientClipping, AutoClip
from lightning_tricks.optim.target_batch_size import TargetBatchSize

__all__: list[str] = []
# optim team: gradient clipping and accumulation
__all__ += ["AdaptiveGradientClipping", "AutoClip", "TargetBatchSize"]
