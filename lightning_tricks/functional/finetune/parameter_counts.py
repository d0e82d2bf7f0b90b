"""Count a model's parameters: total, trainable and frozen."""

from __future__ import annotations

from torch import nn

from lightning_tricks.functional._checks import check_module

__all__ = ["count_parameters"]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Count the elements of ``model``'s parameters; tied parameters count once.

        Args:
            model: any module.

        Returns:
            ``{"total": ..., "trainable": ..., "frozen": ...}`` where trainable parameters are
            those with ``requires_grad=True``.

        Raises:
            TypeError: ``model`` is not an ``nn.Module``.

        Example:
            >>> from torch import nn

    from lightning_tricks.functional._checks import check_module
            >>> net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
            >>> net[0].weight.requires_grad_(False)
            Parameter containing:...
            >>> count_parameters(net)
            {'total': 11, 'trainable': 5, 'frozen': 6}
    """
    model = check_module("model", model)
    trainable = frozen = 0
    for p in model.parameters():  # de-duplicates tied parameters by identity
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"total": trainable + frozen, "trainable": trainable, "frozen": frozen}
