"""FilterVisualizer: the images chosen channels respond to most, every N epochs
(pair: ``FilterVisualizer`` <-> [`visualize_filters`][lightning_tricks.functional.visualize_filters])."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks._logging import component_dir, component_name, image_writer, write_png
from lightning_tricks.functional._checks import (
    check_choice,
    check_int,
    check_number,
    check_on_error,
    check_optional_path,
    check_str_sequence,
)
from lightning_tricks.functional._modules import resolve_modules
from lightning_tricks.functional.inspect.filter_visualizer import (
    MAX_ROUNDS,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    ColorSpace,
    layer_channels,
    visualize_filters,
)
from lightning_tricks.functional.inspect.grad_cam import image_grid
from lightning_tricks.inspect._side_activity import run_side_activity
from lightning_tricks.inspect.grad_cam import first_images, safe_name

__all__ = ["FilterVisualizer"]


class FilterVisualizer(Callback):
    """Log, every N epochs, the images that chosen channels of chosen layers respond to most.

    At the end of every ``every_n_epochs``-th training epoch, global rank 0 runs
    [`visualize_filters`][lightning_tricks.functional.visualize_filters]
    (activation maximisation from noise with Adam at growing resolution, jitter/blur
    regularisation, a decorrelated or clamped colour space) for each selected layer and
    logs one grid per layer, one image per channel: with a TensorBoard logger the image
    ``filter_visualizer/<layer>``, otherwise a PNG file ``<layer>_epoch<E>_step<S>.png``
    under ``dirpath``. The input shape ``(C, H, W)`` is read once from the first training
    batch (the generated images have that channel count and side ``size or H``).

    Training is untouched: the optimisation runs in eval mode on a private copy of
    nothing but the input image, with every parameter's ``requires_grad`` off, and
    restores train/eval flags, ``requires_grad``, parameter gradients and the global RNG
    streams (its noise comes from a generator seeded by ``seed``); weights, buffers and
    optimizer state are never written. On epochs it does not run it costs nothing.

    Args:
        layers: modules whose channels are visualised, by the library's naming rule
            (qualified names, segment-wise globs, class names; a lone string is one entry).
        channels: the first N channels of each layer (an int), or these channel indices.
        every_n_epochs: run after every N-th training epoch.
        steps: Adam steps per resolution round.
        rounds: resolution rounds (the side grows by ``upscale`` up to the final size).
        upscale: resolution factor between rounds.
        size: side of the generated images; by default the training images' height.
        lr: Adam learning rate.
        jitter: largest random shift in pixels per step.
        color: ``"decorrelated"`` or ``"clamped"``.
        mean: the model's input normalisation (per-channel mean), applied to the images.
        std: the model's input normalisation (per-channel std).
        seed: seeds the noise and jitter.
        dirpath: where PNG files go when no logger takes images; by default
            ``<log_dir>/filter_visualizer/``.
        on_error: when a run fails: ``"warn"`` once and stop, ``"raise"``, or ``"ignore"``.

    Raises:
        ValueError: arguments out of range; at fit start, ``layers`` that select nothing.
        TypeError: arguments of the wrong type.

    Example:
        >>> from lightning_tricks import FilterVisualizer
        >>> cb = FilterVisualizer(layers="backbone.*", channels=4, every_n_epochs=5, steps=16)
        >>> cb.layers, cb.channels
        (('backbone.*',), 4)
    """

    def __init__(
        self,
        layers: Sequence[str] | str,
        channels: int | Sequence[int] = 8,
        every_n_epochs: int = 1,
        steps: int = 32,
        rounds: int = 3,
        upscale: float = 1.5,
        size: int | None = None,
        lr: float = 0.1,
        jitter: int = 1,
        color: Literal["decorrelated", "clamped"] = "decorrelated",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        dirpath: str | None = None,
        on_error: Literal["warn", "raise", "ignore"] = "warn",
    ) -> None:
        self.layers = check_str_sequence("layers", layers)
        if (
            isinstance(channels, bool)
            or not isinstance(channels, int | Sequence)
            or isinstance(channels, str)
        ):
            raise TypeError(f"`channels` must be a count or a sequence of channel indices; got {channels!r}")
        if isinstance(channels, int):
            self.channels: int | tuple[int, ...] = check_int("channels", channels, minimum=1)
        else:
            self.channels = tuple(check_int("channels", c, minimum=0) for c in channels)
            if not self.channels:
                raise ValueError(f"`channels` must name at least one channel; got {channels!r}")
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.steps = check_int("steps", steps, minimum=1, maximum=MAX_STEPS)
        self.rounds = check_int("rounds", rounds, minimum=1, maximum=MAX_ROUNDS)
        self.upscale = check_number("upscale", upscale, minimum=1.0)
        self.size = None if size is None else check_int("size", size, minimum=1, maximum=MAX_SIZE)
        self.lr = check_number("lr", lr, minimum=0.0, exclusive_minimum=True)
        self.jitter = check_int("jitter", jitter, minimum=0, maximum=MAX_SIZE)
        self.color: ColorSpace = check_choice("color", color, get_args(ColorSpace))
        self.mean = None if mean is None else tuple(check_number("mean", m) for m in mean)
        self.std = (
            None
            if std is None
            else tuple(check_number("std", s, minimum=0.0, exclusive_minimum=True) for s in std)
        )
        self.seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        self.dirpath = check_optional_path("dirpath", dirpath)
        self.on_error = check_on_error(on_error)
        self._reset()

    def _reset(self) -> None:
        self._layer_names: list[str] = []
        self._shape: tuple[int, ...] | None = None
        self._failed = False
        self._told_where = False
        self._out_dir = Path(component_name(self))
        self.last_images: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self._layer_names = list(resolve_modules(pl_module, self.layers, "layers"))  # fails at fit start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._out_dir = component_dir(trainer, self, self.dirpath)  # a collective under DDP

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._shape is None:
            images = first_images(batch, 1)
            if images is not None:
                self._shape = tuple(images.shape[1:])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        shape = self._shape
        if not trainer.is_global_zero or self._failed or shape is None:
            return
        self._failed = not run_side_activity(
            lambda: self._capture(trainer, pl_module, shape),
            self.on_error,
            f"FilterVisualizer: visualising `layers` {list(self._layer_names)}",
            "No more filter images in this fit; training goes on.",
        )

    # ---------------------------------------------------------------- capture
    def _capture(self, trainer: L.Trainer, pl_module: L.LightningModule, shape: tuple[int, ...]) -> None:
        in_channels, height = shape[0], shape[1]
        step, epoch = trainer.global_step, trainer.current_epoch
        writer = image_writer(trainer)
        for name in self._layer_names:
            if isinstance(self.channels, int):
                channels = list(range(min(self.channels, layer_channels(pl_module, name, shape))))
            else:
                channels = list(self.channels)
            images = visualize_filters(
                pl_module,
                name,
                channels,
                size=self.size or height,
                in_channels=in_channels,
                steps=self.steps,
                rounds=self.rounds,
                upscale=self.upscale,
                lr=self.lr,
                jitter=self.jitter,
                color=self.color,
                mean=self.mean,
                std=self.std,
                seed=self.seed,
            ).cpu()
            self.last_images[name] = images
            shown = images[:, :3] if in_channels >= 3 else images[:, :1].expand(-1, 3, -1, -1)
            grid = image_grid(shown, nrow=min(8, len(channels)))
            if writer is not None:
                writer.add_image(f"{component_name(self)}/{name}", grid, step)
            else:
                write_png(self._out_dir / f"{safe_name(name)}_epoch{epoch:03d}_step{step:06d}.png", grid)
        if writer is not None:
            writer.flush()
        elif not self._told_where:
            self._told_where = True
            rank_zero_warn(
                f"FilterVisualizer: no logger takes images, so the filter images are PNG files in {self._out_dir}"
            )
