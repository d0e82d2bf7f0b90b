"""Walking nested containers for tensors (shared by the inspect guards)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["tensor_leaves", "walk_tensors"]


def walk_tensors(obj: Any, path: str, depth: int, budget: list[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if budget[0] <= 0:
        return
    budget[0] -= 1
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif depth > 0 and isinstance(obj, (list, tuple, set, frozenset)):
        for i, item in enumerate(obj):
            yield from walk_tensors(item, f"{path}[{i}]", depth - 1, budget)
    elif depth > 0 and isinstance(obj, dict):
        for key, item in list(obj.items()):
            yield from walk_tensors(item, f"{path}[{key!r}]", depth - 1, budget)


def tensor_leaves(obj: Any, prefix: str = "batch", max_depth: int = 4) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested list/tuple/dict, with its path.

    Example:
        >>> ((path, tensor),) = tensor_leaves({"x": torch.zeros(1)})
        >>> path
        "batch['x']"
    """
    return list(walk_tensors(obj, prefix, max_depth, [100_000]))
