"""Per-layer gradient norms (batched, one host transfer) and intermediate gradients of module outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_tricks.functional._modules import unknown_module_error

__all__ = ["IntermediateGrads", "first_nonfinite", "layer_grad_norms"]


def _layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def layer_grad_norms(model: nn.Module, norm_type: float = 2.0) -> tuple[list[str], torch.Tensor]:
    """Gradient norm of every layer (parameters grouped by owning module), stacked on device.

    Nothing is moved to the host: call ``.tolist()`` on the result once, on the steps
    that log. Parameters without a gradient are skipped.

    Args:
        model: the network.
        norm_type: the p of the p-norm (``inf`` for the max norm).

    Returns:
        ``(layer_names, norms)``: names in model order and a float32 tensor of norms.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> net(torch.ones(1, 2)).sum().backward()
        >>> names, norms = layer_grad_norms(net)
        >>> names, norms.shape
        (['0', '2'], torch.Size([2]))
    """
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return [], torch.zeros(0)
    grads = [g.detach() for _, g in named]
    per_param = torch.stack([n.float() for n in torch._foreach_norm(grads, norm_type)])
    position: dict[str, int] = {}
    index = [position.setdefault(_layer_of(n), len(position)) for n, _ in named]
    layers = list(position)
    idx = torch.tensor(index, device=per_param.device)
    if math.isinf(norm_type):
        out = torch.zeros(len(layers), device=per_param.device).scatter_reduce(
            0, idx, per_param, reduce="amax", include_self=False
        )
    else:
        powered = per_param.pow(norm_type)
        out = (
            torch.zeros(len(layers), device=per_param.device).index_add(0, idx, powered).pow(1.0 / norm_type)
        )
    return layers, out


def first_nonfinite(names: Sequence[str], values: Sequence[float]) -> str | None:
    """The first name whose value is NaN or infinite, or ``None``.

    Example:
        >>> first_nonfinite(["a", "b", "c"], [1.0, float("nan"), float("inf")])
        'b'
    """
    for name, value in zip(names, values):
        if not math.isfinite(value):
            return name
    return None


class IntermediateGrads:
    """Keep the gradients of named modules' outputs (the ``retain_grad`` trick) for one backward.

    Inside the ``with`` block, a forward hook on each named module registers a tensor
    hook on its output; during backward the gradient is stored in :attr:`grads`. All
    hooks are removed when the block exits.

    Args:
        model: the network.
        names: qualified names of the modules whose output gradients to keep.

    Raises:
        ValueError: if a name is not a submodule of ``model``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> with IntermediateGrads(net, ["1"]) as ig:
        ...     net(torch.ones(4, 2)).sum().backward()
        >>> ig.grads["1"].shape, len(net[1]._forward_hooks)
        (torch.Size([4, 3]), 0)
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules:
                raise unknown_module_error("intermediate", name, model)
        self._modules = [(n, modules[n]) for n in names]
        self.grads: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return
        for name, module in self._modules:
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _forward_hook(self, name: str):
        def store(grad: torch.Tensor) -> None:
            self.grads[name] = grad.detach()

        def hook(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(store)

        return hook

    def __enter__(self) -> IntermediateGrads:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
