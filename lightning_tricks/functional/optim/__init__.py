"""Pure-PyTorch cores for the `optim` area."""

from lightning_tricks.functional.optim._clip import ClipResult
from lightning_tricks.functional.optim.accumulation import WindowMean, accumulation_steps
from lightning_tricks.functional.optim.agc import adaptive_clip_grad_, unitwise_norm
from lightning_tricks.functional.optim.autoclip import AutoClipper
from lightning_tricks.functional.optim.no_bias_decay import (
    no_bias_decay_groups,
    no_weight_decay_names,
    split_by_weight_decay,
)
from lightning_tricks.functional.optim.param_groups import add_param_groups, split_param_groups

__all__: list[str] = [
    "AutoClipper",
    "ClipResult",
    "WindowMean",
    "accumulation_steps",
    "adaptive_clip_grad_",
    "add_param_groups",
    "no_bias_decay_groups",
    "no_weight_decay_names",
    "split_by_weight_decay",
    "split_param_groups",
    "unitwise_norm",
]
