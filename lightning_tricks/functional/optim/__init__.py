"""Pure-PyTorch cores for the `optim` area."""

# optim team: gradient clipping and accumulation
from lightning_tricks.functional.optim._clip import ClipResult
from lightning_tricks.functional.optim.accumulation import WindowMean, accumulation_steps
from lightning_tricks.functional.optim.agc import adaptive_clip_grad_, unitwise_norm
from lightning_tricks.functional.optim.autoclip import AutoClipper

__all__: list[str] = []
# optim team: gradient clipping and accumulation
__all__ += [
    "AutoClipper",
    "ClipResult",
    "WindowMean",
    "accumulation_steps",
    "adaptive_clip_grad_",
    "unitwise_norm",
]
