"""``AutoClip``: AutoClip (Seetharaman et al. 2020) as a callback.

Pair: [`auto_clip_`][lightning_tricks.functional.auto_clip_] with the
[`AutoClipper`][lightning_tricks.functional.AutoClipper] the callback keeps and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_tricks.functional._checks import check_number, check_optional_int
from lightning_tricks.functional._modules import resolve_parameters
from lightning_tricks.functional.optim._clip import ClipResult
from lightning_tricks.functional.optim.autoclip import AutoClipper, auto_clip_
from lightning_tricks.optim._clip import _ClippingCallback

__all__ = ["AutoClip"]


class AutoClip(_ClippingCallback):
    """AutoClip (Seetharaman et al. 2020): clip the gradient norm to a percentile of the
    gradient norms seen so far.

    Runs [`auto_clip_`][lightning_tricks.functional.auto_clip_] with an
    [`AutoClipper`][lightning_tricks.functional.AutoClipper] on the unscaled, all-reduced
    gradients of every optimizer step. Norms of steps that ``GradScaler`` skips
    (inf/NaN) are not recorded. The history is saved in checkpoints and, because DDP's
    gradients are identical on every rank, it is identical on every rank. On logging
    steps it logs ``auto_clip/grad_norm_pre_clip``, ``auto_clip/grad_norm_post_clip``,
    ``auto_clip/clip_value`` and ``auto_clip/clipped_fraction``; other steps do not sync.

    Args:
        percentile: percentile (0-100) of past gradient norms to clip to (paper: 10).
        history_size: keep the last ``history_size`` norms only; ``None`` keeps all.
        norm_type: order of the total gradient norm.
        exclude: parameters or modules left out of the clipped norm (and not clipped),
            by the naming rule (qualified names, segment-wise globs, class names).

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a bad argument, or (in ``setup``) if an ``exclude`` entry names
            nothing (with near-name suggestions).
        MisconfigurationException: with a strategy that shards gradients (FSDP, DeepSpeed).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[AutoClip(percentile=10)], logger=False)
    """

    def __init__(
        self,
        percentile: float = 10.0,
        history_size: int | None = None,
        norm_type: float = 2.0,
        exclude: str | Sequence[str] = (),
    ) -> None:
        self.percentile = check_number("percentile", percentile, minimum=0.0, maximum=100.0)
        self.history_size = check_optional_int("history_size", history_size, minimum=1)
        super().__init__(norm_type, exclude)
        self.clipper = AutoClipper(self.percentile, self.history_size, self.norm_type)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(percentile=self.percentile, history_size=self.history_size)

    def _excluded_names(self, pl_module: pl.LightningModule) -> list[str]:
        return list(resolve_parameters(pl_module, self.exclude, "exclude", allow_empty=True))

    def _reset_fit_state(self, pl_module: pl.LightningModule) -> None:
        self.clipper.reset()  # a checkpoint, if any, is loaded after setup

    def _clip(self, params: list[torch.Tensor]) -> ClipResult:
        return auto_clip_(params, self.clipper)

    def _extra_logs(self) -> dict[str, torch.Tensor]:
        threshold = self.clipper.last_threshold
        return {} if threshold is None else {"clip_value": threshold}

    def state_dict(self) -> dict[str, Any]:
        return {"clipper": self.clipper.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.clipper.load_state_dict(state_dict.get("clipper", {}))
