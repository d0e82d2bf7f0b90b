"""ClassActivationMaps: Grad-CAM heatmaps of a fixed validation batch, every N epochs
(pair: ``ClassActivationMaps`` <-> [`grad_cam`][lightning_tricks.functional.grad_cam])."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks._logging import component_dir, component_name, image_writer, write_png
from lightning_tricks.functional._checks import (
    check_int,
    check_number,
    check_on_error,
    check_optional_path,
    check_str,
)
from lightning_tricks.functional.inspect.grad_cam import grad_cam, overlay_heatmaps, resolve_one_layer
from lightning_tricks.inspect._side_activity import run_side_activity

__all__ = ["ClassActivationMaps", "first_images", "safe_name"]


def first_images(batch: Any, n: int) -> torch.Tensor | None:
    """A detached copy of the first ``n`` images ``(n, C, H, W)`` of a batch: a tensor, the
    first element of a tuple/list, or the first 4-D tensor of a dict (``pixel_values``)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n].detach().clone() if batch.dim() == 4 else None
    if isinstance(batch, (list, tuple)) and batch:
        return first_images(batch[0], n)
    if isinstance(batch, dict):
        for value in batch.values():
            found = first_images(value, n)
            if found is not None:
                return found
    return None


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class ClassActivationMaps(Callback):
    """Log Grad-CAM heatmaps of a fixed validation batch, overlaid on its images, every N epochs.

    The batch is the first ``num_images`` images of the first validation batch (of the
    first training batch when there is no validation), kept from the first time it is
    seen. At the end of every ``every_n_epochs``-th training epoch, global rank 0 runs
    [`grad_cam`][lightning_tricks.functional.grad_cam] on it, explaining each
    image's predicted class, and logs one grid: the images in the top row, the heatmaps
    blended over them below. With a TensorBoard logger the grid is the image
    ``class_activation_maps/<layer>``; with other loggers (or none) it is a PNG file
    ``<layer>_epoch<E>_step<S>.png`` under ``dirpath``.

    Training is untouched: the capture runs in eval mode with gradients only with respect
    to the layer's output, and restores train/eval flags, ``requires_grad``, parameter
    gradients and the global RNG streams; weights, buffers and optimizer state are never
    written. On epochs it does not run it costs nothing.

    The model is called as ``pl_module(images)`` (inside the precision plugin's forward
    context) and may return logits, a ``ModelOutput`` with ``.logits`` or a tuple starting
    with them.

    Args:
        layer: the module whose feature maps ``(B, C, H, W)`` are weighted, by the library's
            naming rule (one module), e.g. ``"backbone.1"`` or ``"model.resnet.encoder.stages.1"``.
        num_images: images shown.
        every_n_epochs: run after every N-th training epoch.
        alpha: weight of the heat colour in the overlay.
        dirpath: where PNG files go when no logger takes images; by default
            ``<log_dir>/class_activation_maps/``.
        on_error: when a capture fails (e.g. the layer has no spatial dimensions):
            ``"warn"`` once and stop capturing, ``"raise"``, or ``"ignore"`` (stop silently).

    Raises:
        ValueError: arguments out of range; at fit start, ``layer`` selecting no or several modules.
        TypeError: ``layer`` not a string.

    Example:
        >>> from lightning_tricks import ClassActivationMaps
        >>> cb = ClassActivationMaps(layer="backbone.1", num_images=4, every_n_epochs=2)
        >>> cb.layer, cb.num_images
        ('backbone.1', 4)
    """

    def __init__(
        self,
        layer: str,
        num_images: int = 8,
        every_n_epochs: int = 1,
        alpha: float = 0.5,
        dirpath: str | None = None,
        on_error: Literal["warn", "raise", "ignore"] = "warn",
    ) -> None:
        self.layer = check_str("layer", layer)
        self.num_images = check_int("num_images", num_images, minimum=1)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.alpha = check_number("alpha", alpha, minimum=0.0, maximum=1.0)
        self.dirpath = check_optional_path("dirpath", dirpath)
        self.on_error = check_on_error(on_error)
        self._reset()

    def _reset(self) -> None:
        self.sample: torch.Tensor | None = None
        self._from_val = False
        self._layer_name = self.layer
        self._failed = False
        self._told_where = False
        self._out_dir = Path(component_name(self))
        self.last_maps: torch.Tensor | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self._layer_name = resolve_one_layer(pl_module, self.layer)[0]  # fails at fit start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._out_dir = component_dir(trainer, self, self.dirpath)  # a collective under DDP

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._from_val and trainer.is_global_zero and not trainer.sanity_checking:
            images = first_images(batch, self.num_images)
            if images is not None:
                self.sample, self._from_val = images, True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.sample is None and trainer.is_global_zero:
            self.sample = first_images(batch, self.num_images)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if not trainer.is_global_zero or self._failed or self.sample is None:
            return
        self._failed = not run_side_activity(
            lambda: self._capture(trainer, pl_module),
            self.on_error,
            f"ClassActivationMaps: Grad-CAM on `layer` {self._layer_name!r}",
            "No more heatmaps in this fit; training goes on.",
        )

    # ---------------------------------------------------------------- capture
    def _capture(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sample = self.sample
        if sample is None:
            return
        plugin = trainer.precision_plugin
        x = plugin.convert_input(sample.to(pl_module.device))
        with plugin.forward_context():
            cams = grad_cam(pl_module, x, self._layer_name)
        self.last_maps = cams.cpu()
        grid = overlay_heatmaps(sample.float().cpu(), self.last_maps, self.alpha)
        step, epoch = trainer.global_step, trainer.current_epoch
        writer = image_writer(trainer)
        if writer is not None:
            writer.add_image(f"{component_name(self)}/{self._layer_name}", grid, step)
            writer.flush()
            return
        path = self._out_dir / f"{safe_name(self._layer_name)}_epoch{epoch:03d}_step{step:06d}.png"
        write_png(path, grid)
        if not self._told_where:
            self._told_where = True
            rank_zero_warn(
                f"ClassActivationMaps: no logger takes images, so the heatmaps are PNG files in {path.parent}"
            )
