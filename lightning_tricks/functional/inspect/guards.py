"""Cheap checks for two common mistakes: graphs kept alive across steps, and batches aliasing the dataset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "RetainedGraph",
    "dataset_storages",
    "find_aliased_tensors",
    "find_retained_graphs",
    "graph_saved_bytes",
    "tensor_leaves",
]

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


def _walk(obj: Any, path: str, depth: int, budget: list[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if budget[0] <= 0:
        return
    budget[0] -= 1
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif depth > 0 and isinstance(obj, (list, tuple, set, frozenset)):
        for i, item in enumerate(obj):
            yield from _walk(item, f"{path}[{i}]", depth - 1, budget)
    elif depth > 0 and isinstance(obj, dict):
        for key, item in list(obj.items()):
            yield from _walk(item, f"{path}[{key!r}]", depth - 1, budget)


def tensor_leaves(obj: Any, prefix: str = "batch", max_depth: int = 4) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested list/tuple/dict, with its path.

    Example:
        >>> ((path, tensor),) = tensor_leaves({"x": torch.zeros(1)})
        >>> path
        "batch['x']"
    """
    return list(_walk(obj, prefix, max_depth, [100_000]))


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
    tensors: list[torch.Tensor], exclude_ptrs: set[int] = frozenset(), max_nodes: int = 2000
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
        One :class:`RetainedGraph` per top-level attribute holding a graph.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> net.losses = [net(torch.ones(1, 2)).sum()]
        >>> for r in find_retained_graphs(net):
        ...     print(r.path, r.num_tensors)
        self.losses 1
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
    param_ptrs |= {b.untyped_storage().data_ptr() for b in module.buffers()}
    budget = [max_items]
    found = []
    for mod_name, mod in module.named_modules():
        base = f"{prefix}.{mod_name}" if mod_name else prefix
        for attr, value in list(vars(mod).items()):
            if attr in _MODULE_REGISTRIES or attr.startswith("__") or isinstance(value, nn.Module):
                continue
            with_graph = [t for _, t in _walk(value, attr, max_depth, budget) if t.grad_fn is not None]
            if with_graph:
                nodes, nbytes = graph_saved_bytes(with_graph, param_ptrs)
                found.append(RetainedGraph(f"{base}.{attr}", len(with_graph), nodes, nbytes))
            if budget[0] <= 0:
                return found
    return found


def dataset_storages(dataset: Any, max_depth: int = 2) -> dict[int, str]:
    """Storage data pointers of the tensors a dataset holds, mapped to a readable name.

    Looks at ``dataset.tensors`` (``TensorDataset``) and at tensors among the dataset's
    attributes (nested up to ``max_depth``), following ``.dataset`` of ``Subset``-like
    wrappers.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.zeros(4, 2))
        >>> list(dataset_storages(ds).values())
        ['dataset.tensors[0]']
    """
    out: dict[int, str] = {}
    prefix = "dataset"
    seen = 0
    while dataset is not None and seen < 4:
        attrs = vars(dataset) if hasattr(dataset, "__dict__") else {}
        for attr, value in attrs.items():
            for path, t in _walk(value, f"{prefix}.{attr}", max_depth, [10_000]):
                if t.numel() > 0:
                    out.setdefault(t.untyped_storage().data_ptr(), path)
        dataset = attrs.get("dataset")
        prefix += ".dataset"
        seen += 1
    return out


def find_aliased_tensors(batch: Any, storages: dict[int, str]) -> list[tuple[str, torch.Tensor, str]]:
    """The tensors of ``batch`` that share storage with the dataset (see :func:`dataset_storages`).

    Returns:
        ``(batch_path, tensor, dataset_name)`` for each aliased tensor.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(8.0).reshape(4, 2))
        >>> batch = (ds.tensors[0].narrow(0, 0, 2), torch.zeros(2))  # a view and a copy
        >>> for path, _, name in find_aliased_tensors(batch, dataset_storages(ds)):
        ...     print(path, "aliases", name)
        batch[0] aliases dataset.tensors[0]
    """
    out = []
    for path, t in tensor_leaves(batch):
        if t.numel() == 0:
            continue
        name = storages.get(t.untyped_storage().data_ptr())
        if name is not None:
            out.append((path, t, name))
    return out
