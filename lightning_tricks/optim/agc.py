"""``AdaptiveGradientClipping``: AGC (Brock et al. 2021) as a callback.

Pair: [`adaptive_clip_grad_`][lightning_tricks.functional.adaptive_clip_grad_] on the parameters that
[`adaptive_clip_exclusions`][lightning_tricks.functional.adaptive_clip_exclusions] does not leave out.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from lightning_tricks.functional._checks import check_bool, check_number
from lightning_tricks.functional.optim._clip import ClipResult
from lightning_tricks.functional.optim.agc import adaptive_clip_exclusions, adaptive_clip_grad_
from lightning_tricks.optim._clip import _ClippingCallback

__all__ = ["AdaptiveGradientClipping"]


class AdaptiveGradientClipping(_ClippingCallback):
    """Adaptive gradient clipping (AGC, Brock et al. 2021): clip each unit's gradient
    relative to the norm of its weights, as NFNets do.

    Runs [`adaptive_clip_grad_`][lightning_tricks.functional.adaptive_clip_grad_] on the unscaled,
    all-reduced gradients of every optimizer step. On logging steps it logs
    ``adaptive_gradient_clipping/grad_norm_pre_clip``,
    ``adaptive_gradient_clipping/grad_norm_post_clip`` (whole model) and
    ``adaptive_gradient_clipping/clipped_fraction`` (share of optimizer steps since the
    last log where a unit was clipped, steps skipped by ``GradScaler`` left out); other
    steps do not sync.

    Args:
        clip_factor: the threshold λ: a unit's gradient norm is kept below
            ``clip_factor * max(||W||, eps)``. The paper uses 0.01 at batch size 4096,
            larger values for smaller batches.
        eps: lower bound of the weight norm.
        norm_type: order of the unit-wise norms.
        skip_classifier: leave the final classifier out, as the paper does: the layer
            [`find_head`][lightning_tricks.functional.find_head] finds (the model's
            ``get_classifier()`` (timm convention) if it has one, else the last
            ``nn.Linear`` that is not an attention projection).
        exclude: further parameters or modules to leave out, by the naming rule
            (qualified names, segment-wise globs such as ``"backbone.*"`` or
            ``"**.bias"``, class names), e.g. ``["head"]``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a bad argument, or (in ``setup``) if an ``exclude`` entry names
            nothing (with near-name suggestions).
        MisconfigurationException: with a strategy that shards gradients (FSDP, DeepSpeed).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[AdaptiveGradientClipping(clip_factor=0.02)], logger=False)
    """

    def __init__(
        self,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        norm_type: float = 2.0,
        skip_classifier: bool = True,
        exclude: str | Sequence[str] = (),
    ) -> None:
        self.clip_factor = check_number("clip_factor", clip_factor, minimum=0.0, exclusive_minimum=True)
        self.eps = check_number("eps", eps, minimum=0.0, exclusive_minimum=True)
        self.skip_classifier = check_bool("skip_classifier", skip_classifier)
        super().__init__(norm_type, exclude)

    def _excluded_names(self, pl_module: pl.LightningModule) -> list[str]:
        return adaptive_clip_exclusions(pl_module, skip_classifier=self.skip_classifier, exclude=self.exclude)

    def _clip(self, params: list[torch.Tensor]) -> ClipResult:
        return adaptive_clip_grad_(params, self.clip_factor, self.eps, self.norm_type)
