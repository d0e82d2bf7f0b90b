"""``log_parameter_counts``: write a model's parameter counts to the loggers' hyperparameters.

The Lightning side of [`lightning_tricks.functional.count_parameters`][lightning_tricks.functional.count_parameters]. Call it once,
explicitly, to record the model's size with a run's hyperparameters. ``FreezeBackbone``
does not call it: it logs its own ``freeze_backbone/params_trainable`` and
``freeze_backbone/params_frozen`` scalars (through ``LightningModule.log``) whenever
freezing or unfreezing changes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.loggers import Logger
from torch import nn

from lightning_tricks.functional.finetune.parameter_counts import count_parameters

__all__ = ["log_parameter_counts"]


def log_parameter_counts(model: nn.Module, loggers: Logger | Sequence[Logger]) -> dict[str, int]:
    """Log total, trainable and frozen parameter counts to the loggers' hyperparameters.

    Args:
        model: the model to count (see [`lightning_tricks.functional.count_parameters`][lightning_tricks.functional.count_parameters]).
        loggers: one Lightning logger or several (e.g. ``trainer.loggers``).

    Returns:
        The counts that were logged, as ``params/total``, ``params/trainable``, ``params/frozen``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> from torch import nn
        >>> log_parameter_counts(nn.Linear(3, 2), CSVLogger("logs"))
        {'params/total': 8, 'params/trainable': 8, 'params/frozen': 0}
    """
    counts = {f"params/{k}": v for k, v in count_parameters(model).items()}
    for logger in [loggers] if isinstance(loggers, Logger) else list(loggers):
        logger.log_hyperparams(counts)
    return counts
