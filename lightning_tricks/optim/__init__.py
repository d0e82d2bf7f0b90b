"""Lightning layer for the `optim` area."""

from lightning_tricks.optim.no_bias_decay import NoBiasDecay

__all__: list[str] = [
    "NoBiasDecay",
]
