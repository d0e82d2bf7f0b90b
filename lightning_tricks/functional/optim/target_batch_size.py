"""Gradient accumulation towards a target global batch size, and the true loss of an
optimizer step.

With ``k`` accumulation steps, Lightning (like most loops) divides every batch's loss by
``k`` before ``backward``, also in the last window of an epoch, which may hold fewer than
``k`` batches. The loss it hands to callbacks is therefore ``loss / k``, and a naive sum
over the last window under-reports it. [`WindowMean`][lightning_tricks.functional.WindowMean] keeps the mean of the
*undivided* losses of the batches that really went into one optimizer step.

Pair: the callback [`TargetBatchSize`][lightning_tricks.TargetBatchSize] sets the accumulation from
[`accumulation_steps`][lightning_tricks.functional.accumulation_steps] and logs the step's loss from a [`WindowMean`][lightning_tricks.functional.WindowMean].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from lightning_tricks.functional._checks import check_int, check_number, check_tensor

__all__ = ["WindowMean", "accumulation_steps"]


def _leading_dims(batch: Any, _depth: int = 0) -> list[int]:
    """Leading dims of the tensors in ``batch`` with at least one dim, in order.

    Looks into mappings (dicts, ``ModelOutput``, ``BatchEncoding``), lists and tuples
    (named ones too) and dataclasses, the same way for each; 0-d tensors (scalars such
    as a temperature or a token count) have no batch dimension and are skipped.
    """
    if isinstance(batch, torch.Tensor):
        return [int(batch.shape[0])] if batch.ndim else []
    if _depth > 16 or isinstance(batch, str | bytes):
        return []
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, list | tuple):
        items = batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        items = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    else:
        return []
    return [d for item in items for d in _leading_dims(item, _depth + 1)]


def accumulation_steps(global_batch_size: int, batch_size: int, world_size: int = 1) -> int:
    """The number of batches to accumulate so that ``batch_size * world_size * steps == global_batch_size``.

    Args:
        global_batch_size: samples per optimizer step, over all processes.
        batch_size: samples per batch on one process.
        world_size: number of processes (data-parallel replicas).

    Returns:
        The accumulation steps, >= 1.

    Raises:
        ValueError: if the global batch is not a multiple of ``batch_size * world_size``.

    Example:
        >>> accumulation_steps(256, batch_size=32, world_size=2)
        4
    """
    global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    world_size = check_int("world_size", world_size, minimum=1)
    per_pass = batch_size * world_size
    if global_batch_size % per_pass:
        lower = max(per_pass, global_batch_size // per_pass * per_pass)
        raise ValueError(
            f"`global_batch_size` {global_batch_size} is not a multiple of batch_size x world_size ="
            f" {batch_size} x {world_size} = {per_pass}; choose a multiple of {per_pass}"
            f" (e.g. {lower} or {lower + per_pass}) or change the batch size"
        )
    return global_batch_size // per_pass


class WindowMean:
    """Weighted mean of per-batch values over one accumulation window, kept on device.

    ``update`` costs two in-place device additions and no host sync; ``compute`` returns
    a 0-d tensor. Use it with the *undivided* per-batch loss (Lightning's ``loss`` times
    ``accumulate_grad_batches``), weighted by the number of samples in the batch, to get
    the mean loss over the samples of one optimizer step, correct for a shorter last window.

    Example:
        >>> import torch
        >>> m = WindowMean()
        >>> m.update(torch.tensor(2.0), weight=4)
        >>> m.update(torch.tensor(5.0), weight=2)
        >>> float(m.compute()), m.num_updates
        (3.0, 2)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self._sums: torch.Tensor | None = None  # [weighted sum, total weight]
        self.num_updates = 0

    def update(self, value: torch.Tensor, weight: float = 1.0) -> None:
        """Add one batch's value with ``weight`` (e.g. its number of samples).

        Args:
            value: a 0-d tensor (any device); it is detached.
            weight: a number >= 0.

        Raises:
            TypeError: ``value`` is not a tensor.
            ValueError: ``value`` has more or fewer than one element, or ``weight`` is
                negative or not finite.
        """
        value = check_tensor("value", value, numel=1).detach().float().reshape(())
        weight = check_number("weight", weight, minimum=0.0)
        if self._sums is None:
            self._sums = torch.zeros(2, device=value.device)
        self._sums[0] += value * weight
        self._sums[1] += weight
        self.num_updates += 1

    def sums(self) -> torch.Tensor:
        """``[weighted sum, total weight]`` as a float32 tensor of 2 (to all-reduce across ranks)."""
        return torch.zeros(2) if self._sums is None else self._sums.clone()

    def compute(self) -> torch.Tensor:
        """The weighted mean of the window (NaN when empty)."""
        sums = self.sums()
        return sums[0] / sums[1]
