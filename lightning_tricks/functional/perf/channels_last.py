"""Channels-last (NHWC) memory format for a model and for the 4-D tensors of a batch.

The functional core of [`ChannelsLast`][lightning_tricks.ChannelsLast] (a documented pair:
``ChannelsLast`` <-> [`model_to_channels_last`][lightning_tricks.functional.model_to_channels_last], with [`batch_to_channels_last`][lightning_tricks.functional.batch_to_channels_last]
for the batches); the callback converts the model in ``setup`` and each batch after its
transfer to the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from lightning_tricks.functional._checks import check_module

__all__ = ["batch_to_channels_last", "model_to_channels_last"]


def model_to_channels_last(model: nn.Module) -> int:
    """Convert the 4-D parameters (with their gradients) and buffers of ``model`` to
    channels-last, in place; other tensors (a ``Conv3d``'s 5-D weight, biases) are left
    as they are.

    Channels-last lets convolution kernels (cuDNN with Tensor Cores, oneDNN on CPU) avoid
    layout transposes. Parameters keep their identity, so optimizers built before or
    after see the same tensors. Unlike ``model.to(memory_format=torch.channels_last)``,
    which fails half-way on a model with 5-D tensors, this cannot fail once ``model`` is
    a module.

    Args:
        model: the model to convert.

    Returns:
        How many 4-D parameters the model has (0 means there is nothing to gain).

    Raises:
        TypeError: if ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> from torch import nn
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> model_to_channels_last(conv)
        1
        >>> conv.weight.is_contiguous(memory_format=torch.channels_last)
        True
    """
    model = check_module("model", model)
    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
                    if p.grad is not None and p.grad.dim() == 4:
                        p.grad = p.grad.contiguous(memory_format=torch.channels_last)
            for name, b in module.named_buffers(recurse=False):
                if b.dim() == 4:
                    setattr(module, name, b.contiguous(memory_format=torch.channels_last))
    return sum(1 for p in model.parameters() if p.dim() == 4)


def batch_to_channels_last(batch: Any) -> Any:
    """Return ``batch`` with every 4-D floating-point tensor in channels-last format.

    Walks tuples, lists, named tuples and mappings; other values (labels, 3-D tensors,
    strings) are returned unchanged. Tensors already in channels-last are not copied.

    Args:
        batch: a tensor or a (nested) collection of them.

    Returns:
        A collection of the same structure.

    Example:
        >>> x, y = batch_to_channels_last((torch.zeros(2, 3, 4, 4), torch.zeros(2)))
        >>> x.is_contiguous(memory_format=torch.channels_last), y.shape
        (True, torch.Size([2]))
    """
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(batch_to_channels_last(v) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(batch_to_channels_last(v) for v in batch)
    if isinstance(batch, Mapping):
        items = {k: batch_to_channels_last(v) for k, v in batch.items()}
        try:
            return cast(Any, type(batch))(items)
        except TypeError:
            return items
    return batch
