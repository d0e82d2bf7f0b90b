"""Gradient-checkpointing helpers shared by its tests and ``benchmarks/gradient_checkpointing.py``.

* :func:`held_bytes`: the activation memory a forward leaves alive for backward, counted
  from the storages themselves, so that it sees everything autograd keeps: tensors saved
  for backward, checkpoint inputs and the outputs cached by selective checkpointing
  (which ``saved_tensors_hooks`` do not see).
* :func:`hooks_bytes`: the bytes packed by ``torch.autograd.graph.saved_tensors_hooks``.
* :class:`GeluMLP`: the 12 x (Linear-GELU-Linear-GELU) MLP of the checkpointing goals.
* :class:`TorchCheckpointed`: a block under plain ``torch.utils.checkpoint.checkpoint``
  (the baseline).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _RecordOutputs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[StorageWeakRef, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                self.refs.append((StorageWeakRef(st), st.nbytes()))
        return out


def _cdata(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {StorageWeakRef(t.untyped_storage()).cdata for t in tensors}


def held_bytes(
    model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], exclude: Iterable[Any] = ()
) -> int:
    """Bytes of the tensors created by ``loss_fn(model)`` that are still alive when it returns
    (what the graph keeps for backward), without parameters, buffers and ``exclude``.
    Runs backward afterwards and clears the gradients."""
    known = _cdata(
        [*model.parameters(), *model.buffers(), *(t for t in exclude if isinstance(t, torch.Tensor))]
    )
    rec = _RecordOutputs()
    with rec:
        loss = loss_fn(model)
    gc.collect()
    alive = {ref.cdata: n for ref, n in rec.refs if not ref.expired() and ref.cdata not in known}
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(alive.values())


def hooks_bytes(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> int:
    """Bytes of the storages packed by ``saved_tensors_hooks`` (parameters not counted)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[StorageWeakRef(st).cdata] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = _cdata([*model.parameters(), *model.buffers()])
    return sum(n for k, n in seen.items() if k not in params)


class GeluMLP(nn.Module):
    """``depth`` blocks of Linear(dim, hidden)-GELU-Linear(hidden, dim)-GELU and a Linear head."""

    def __init__(self, depth: int = 12, dim: int = 256, hidden: int = 1024, num_classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.GELU())
                for _ in range(depth)
            ]
        )
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class TorchCheckpointed(nn.Module):
    """``block`` run under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` with its
    defaults (RNG state always preserved) when training with grad; the plain block otherwise."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False, **kwargs)
        return self.block(*args, **kwargs)
