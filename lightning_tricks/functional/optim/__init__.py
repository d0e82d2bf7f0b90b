"""Pure-PyTorch cores for the `optim` area."""

from lightning_tricks.functional.optim._clip import ClipResult
from lightning_tricks.functional.optim.agc import adaptive_clip_exclusions, adaptive_clip_grad_, unitwise_norm
from lightning_tricks.functional.optim.autoclip import AutoClipper, auto_clip_
from lightning_tricks.functional.optim.no_bias_decay import (
    no_bias_decay_groups,
    no_weight_decay_names,
    split_by_weight_decay,
)
from lightning_tricks.functional.optim.param_groups import add_param_groups, split_param_groups
from lightning_tricks.functional.optim.target_batch_size import WindowMean, accumulation_steps

__all__: list[str] = [
    "AutoClipper",
    "ClipResult",
    "WindowMean",
    "accumulation_steps",
    "adaptive_clip_exclusions",
    "adaptive_clip_grad_",
    "add_param_groups",
    "auto_clip_",
    "no_bias_decay_groups",
    "no_weight_decay_names",
    "split_by_weight_decay",
    "split_param_groups",
    "unitwise_norm",
]
