"""What the gradient clippers of the `optim` area return, and norm helpers they share."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from lightning_tricks.functional._checks import check_norm_type as _check_norm_type
from lightning_tricks.functional._checks import check_tensors


class ClipResult(NamedTuple):
    """Outcome of one clipping call, as 0-d tensors on the gradients' device (no host sync).

    Attributes:
        norm_before: total gradient norm of the clipped parameters before clipping.
        norm_after: total gradient norm of the clipped parameters after clipping.
        clipped: ``True`` when at least one gradient was scaled down.

    Example:
        >>> import torch
        >>> r = ClipResult(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(True))
        >>> bool(r.clipped), float(r.norm_before / r.norm_after)
        (True, 2.0)
    """

    norm_before: torch.Tensor
    norm_after: torch.Tensor
    clipped: torch.Tensor


def check_norm_type(norm_type: Any) -> float:
    """``norm_type`` checked by the shared rule (a number in [1, 32], or inf)."""
    return _check_norm_type("norm_type", norm_type)


def empty_result() -> ClipResult:
    """The result for a call with no gradient: zero norms, nothing clipped."""
    zero = torch.zeros(())
    return ClipResult(zero, zero.clone(), torch.zeros((), dtype=torch.bool))


def grads_of(parameters: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` tensors of ``parameters`` that have one (``parameters`` checked first:
    a tensor or an iterable of tensors)."""
    return [p.grad for p in check_tensors("parameters", parameters) if p.is_leaf and p.grad is not None]


def total_norm(grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    """The ``norm_type``-norm of all ``grads`` together, as a 0-d float32 tensor (no host sync)."""
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=norm_type).float()


def combine_norms(a: torch.Tensor, b: torch.Tensor, norm_type: float) -> torch.Tensor:
    """Norm of the concatenation of two vectors from their norms ``a`` and ``b``."""
    b = b.to(a.device)
    if math.isinf(norm_type):
        return torch.maximum(a, b)
    return (a.pow(norm_type) + b.pow(norm_type)).pow(1.0 / norm_type)
