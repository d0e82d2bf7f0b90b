"""Find attributes that keep an autograd graph alive between training steps
(the functional core of [`RetainedGraphGuard`][lightning_tricks.RetainedGraphGuard]).

The pair: ``RetainedGraphGuard`` calls [`find_retained_graphs`][lightning_tricks.functional.find_retained_graphs] between steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import check_int, check_module, check_str
from lightning_tricks.functional.inspect._tensors import walk_tensors

__all__ = ["RetainedGraph", "find_retained_graphs", "graph_saved_bytes"]

_MODULE_REGISTRIES = ("_parameters", "_buffers", "_modules")


@dataclass
class RetainedGraph:
    """One attribute that keeps an autograd graph alive.

    Attributes:
        path: where it was found, e.g. ``"self.losses"`` or ``"self.head.cache['x']"``.
        num_tensors: tensors with a ``grad_fn`` under that attribute.
        num_nodes: autograd nodes reachable from them (bounded).
        saved_bytes: bytes of tensors saved for backward that are still alive, plus the
            tensors themselves (parameters excluded).

    Example:
        >>> RetainedGraph("self.losses", 2, 10, 4096).path
        'self.losses'
    """

    path: str
    num_tensors: int
    num_nodes: int
    saved_bytes: int

    def __post_init__(self) -> None:
        check_str("path", self.path)
        for name in ("num_tensors", "num_nodes", "saved_bytes"):
            check_int(name, getattr(self, name), minimum=0)


def _saved_tensors(node: Any) -> Iterator[torch.Tensor]:
    for attr in dir(node):
        if not attr.startswith("_saved_"):
            continue
        try:
            value = getattr(node, attr)
        except RuntimeError:  # freed by backward
            continue
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def graph_saved_bytes(
    tensors: list[torch.Tensor], exclude_ptrs: frozenset[int] | set[int] = frozenset(), max_nodes: int = 2000
) -> tuple[int, int]:
    """Nodes reachable from the tensors' ``grad_fn`` and bytes of the tensors they still hold.

    Counts the tensors themselves and every tensor still saved for backward (freed
    buffers, e.g. after a ``backward()`` without ``retain_graph``, count as zero);
    storages are counted once and those in ``exclude_ptrs`` (parameters) not at all.

    Args:
        tensors: tensors with a ``grad_fn``.
        exclude_ptrs: storage data pointers not to count.
        max_nodes: stop after visiting this many nodes.

    Returns:
        ``(num_nodes, num_bytes)``.

    Example:
        >>> w = torch.randn(256, requires_grad=True)
        >>> loss = (w * 2).exp().sum()  # exp saves its 1 KiB result
        >>> nodes, nbytes = graph_saved_bytes([loss])
        >>> nodes, nbytes >= 1024
        (4, True)
    """
    seen_ptrs = set(exclude_ptrs)
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen_ptrs:
            seen_ptrs.add(ptr)
            total += storage.nbytes()

    stack = []
    for t in tensors:
        add(t)
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
    seen_nodes: set[int] = set()
    while stack and len(seen_nodes) < max_nodes:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        for saved in _saved_tensors(node):
            add(saved)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return len(seen_nodes), total


def find_retained_graphs(
    module: nn.Module, max_depth: int = 3, max_items: int = 10_000, prefix: str = "self"
) -> list[RetainedGraph]:
    """Attributes of ``module`` (and its submodules) that hold tensors with an autograd graph.

    Scans each module's ``__dict__`` (not its parameters, buffers or the module tree
    itself) and nested lists/tuples/dicts up to ``max_depth``. Run it between steps: at
    that point no tensor should still carry a ``grad_fn`` (``losses.append(loss)``
    instead of ``losses.append(loss.detach())`` keeps every step's graph alive).

    Args:
        module: the model (e.g. a LightningModule).
        max_depth: container nesting levels to look into.
        max_items: stop after visiting this many objects.
        prefix: how the root is named in the paths.

    Returns:
        One [`RetainedGraph`][lightning_tricks.functional.RetainedGraph] per top-level attribute holding a graph.

    Raises:
        TypeError: ``module`` is not a module, or an argument of the wrong type.
        ValueError: ``max_depth`` < 0 or ``max_items`` < 1.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> net.losses = [net(torch.ones(1, 2)).sum()]
        >>> for r in find_retained_graphs(net):
        ...     print(r.path, r.num_tensors)
        self.losses 1
    """
    check_module("module", module)
    max_depth = check_int("max_depth", max_depth, minimum=0)
    max_items = check_int("max_items", max_items, minimum=1)
    check_str("prefix", prefix)
    param_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
    param_ptrs |= {b.untyped_storage().data_ptr() for b in module.buffers()}
    budget = [max_items]
    found = []
    for mod_name, mod in module.named_modules():
        base = f"{prefix}.{mod_name}" if mod_name else prefix
        for attr, value in list(vars(mod).items()):
            if attr in _MODULE_REGISTRIES or attr.startswith("__") or isinstance(value, nn.Module):
                continue
            with_graph = [t for _, t in walk_tensors(value, attr, max_depth, budget) if t.grad_fn is not None]
            if with_graph:
                nodes, nbytes = graph_saved_bytes(with_graph, param_ptrs)
                found.append(RetainedGraph(f"{base}.{attr}", len(with_graph), nodes, nbytes))
            if budget[0] <= 0:
                return found
    return found
