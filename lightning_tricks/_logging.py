"""One logging convention for every component of the Lightning layer.

* **Scalars** go through ``LightningModule.log`` (the channel that every logger,
  ``EarlyStopping``, ``ModelCheckpoint`` and the progress bar see), under
  ``<component>/<key>``, where ``<component>`` is the snake_case class name
  (``GradientMonitor`` -> ``gradient_monitor``).
* **Images and histograms** go to the first logger that can take them (TensorBoard's
  ``SummaryWriter``); otherwise they are written as PNG (with Pillow, ``write_png``) and
  CSV files.
* **Files** go to ``dirpath``; ``dirpath=None`` means ``<log_dir>/<component>/``
  (``trainer.log_dir``, or ``default_root_dir`` without a logger).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_tricks.functional._io import atomic_write

__all__ = ["component_dir", "component_name", "image_writer", "log_scalars", "metric_key", "write_png"]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def component_name(component: object | type) -> str:
    """The snake_case name of a component's class, the prefix of its keys and its folder.

    Example:
        >>> component_name(type("GradientMonitor", (), {})), component_name(type("TTAEvaluation", (), {}))
        ('gradient_monitor', 'tta_evaluation')
    """
    cls = component if isinstance(component, type) else type(component)
    return _CAMEL.sub("_", cls.__name__).lower()


def metric_key(component: object | type, key: str) -> str:
    """``<component>/<key>``.

    Example:
        >>> metric_key(type("AutoClip", (), {}), "grad_norm")
        'auto_clip/grad_norm'
    """
    return f"{component_name(component)}/{key}"


def log_scalars(
    pl_module: Any,
    component: object,
    values: Mapping[str, Any],
    *,
    on_step: bool = True,
    on_epoch: bool = False,
    sync_dist: bool = False,
    prog_bar: bool = False,
) -> None:
    """Log ``values`` through ``pl_module.log`` under ``<component>/<key>``.

    Tensors stay on their device (no host sync here); ``batch_size=1`` is given so that
    Lightning never has to infer it from the batch.
    """
    for key, value in values.items():
        pl_module.log(
            metric_key(component, key),
            value,
            on_step=on_step,
            on_epoch=on_epoch,
            sync_dist=sync_dist,
            prog_bar=prog_bar,
            batch_size=1,
        )


def image_writer(trainer: Any) -> Any:
    """The first logger's experiment that takes images and histograms (a TensorBoard
    ``SummaryWriter``), or ``None``."""
    for logger in getattr(trainer, "loggers", []) or []:
        experiment = getattr(logger, "experiment", None)
        if all(hasattr(experiment, a) for a in ("add_image", "add_histogram", "add_scalar")):
            return experiment
    return None


def component_dir(trainer: Any, component: object, dirpath: str | Path | None) -> Path:
    """Where a component writes files: ``dirpath``, or ``<log_dir>/<component>/``."""
    if dirpath is not None:
        return Path(dirpath)
    root = getattr(trainer, "log_dir", None) or trainer.default_root_dir
    return Path(root) / component_name(component)


def _to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """``image`` as a CPU ``uint8`` tensor of shape ``(H, W)`` or ``(H, W, 3)``."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`image` must be a torch.Tensor; got {type(image).__name__}")
    img = image.detach().cpu()
    if img.dim() == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.permute(1, 2, 0)
    if img.dim() == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dim() not in (2, 3) or (img.dim() == 3 and img.shape[-1] != 3) or img.numel() == 0:
        raise ValueError(
            f"`image` must have shape (H, W), (1|3, H, W) or (H, W, 3); got {tuple(image.shape)}"
        )
    if img.dtype == torch.bool:
        img = img.to(torch.uint8) * 255
    elif img.is_complex():
        raise TypeError(f"`image` must be a real tensor; got one of dtype {image.dtype}")
    elif not img.is_floating_point() and img.dtype != torch.uint8:
        low, high = int(img.min()), int(img.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"`image` of dtype {image.dtype} must hold pixel values in 0..255 (integer images are not "
                f"scaled; pass floats in [0, 1] instead); got values in [{low}, {high}]"
            )
        img = img.to(torch.uint8)
    elif img.dtype != torch.uint8:
        img = (img.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    return img.contiguous()


def write_png(path: str | os.PathLike[str], image: torch.Tensor) -> Path:
    """Atomically write ``image`` to ``path`` as an 8-bit grayscale or RGB PNG file (Pillow).

    ``image`` is ``(H, W)``, ``(1, H, W)``, ``(3, H, W)`` (channels first, as TensorBoard
    takes them) or ``(H, W, 3)``; float images are taken to lie in ``[0, 1]`` (clamped, NaN
    written as 0), integer images hold the pixel values ``0..255`` themselves (others are
    refused), a bool image is black and white.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> p = write_png(pathlib.Path(tempfile.mkdtemp()) / "a.png", torch.rand(3, 5, 7))
        >>> Image.open(p).size, Image.open(p).mode
        ((7, 5), 'RGB')
    """
    from PIL import Image

    array = _to_uint8_image(image).numpy()
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
