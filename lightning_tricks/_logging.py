"""One logging convention for every component of the Lightning layer.

* **Scalars** go through ``LightningModule.log`` (the channel that every logger,
  ``EarlyStopping``, ``ModelCheckpoint`` and the progress bar see), under
  ``<component>/<key>``, where ``<component>`` is the snake_case class name
  (``GradientMonitor`` -> ``gradient_monitor``).
* **Images and histograms** go to the first logger that can take them (TensorBoard's
  ``SummaryWriter``); otherwise they are written as PNG/CSV files.
* **Files** go to ``dirpath``; ``dirpath=None`` means ``<log_dir>/<component>/``
  (``trainer.log_dir``, or ``default_root_dir`` without a logger).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["component_dir", "component_name", "image_writer", "log_scalars", "metric_key"]

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
