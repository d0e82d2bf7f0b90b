"""Per-layer gradient norms (batched, one host transfer), non-finite gradient tracking and
intermediate gradients of module outputs.

The functional core of [`GradientMonitor`][lightning_tricks.GradientMonitor]: on sampled steps the
callback calls [`layer_grad_norms`][lightning_tricks.functional.layer_grad_norms] (and keeps output gradients with
[`IntermediateGrads`][lightning_tricks.functional.IntermediateGrads]); on every step it folds [`NonFiniteTracker.update`][lightning_tricks.functional.NonFiniteTracker.update] in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_tricks._compat import foreach_norm
from lightning_tricks.functional._checks import (
    check_int,
    check_module,
    check_norm_type,
    check_same_length,
    describe,
)
from lightning_tricks.functional._modules import resolve_modules
from lightning_tricks.functional.inspect.activation_visualizer import _eager

__all__ = ["IntermediateGrads", "NonFiniteTracker", "first_nonfinite", "layer_grad_norms", "layer_of"]


_MAX_STEP = 2**63 - 1


def layer_of(param_name: str) -> str:
    """The layer (owning module) of a parameter name: ``"head.2.weight"`` -> ``"head.2"``."""
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

    Raises:
        TypeError: ``model`` is not a module, ``norm_type`` not a number.
        ValueError: ``norm_type`` is not in [1, 32] or inf.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> net(torch.ones(1, 2)).sum().backward()
        >>> names, norms = layer_grad_norms(net)
        >>> names, norms.shape
        (['0', '2'], torch.Size([2]))
    """
    check_module("model", model)
    norm_type = check_norm_type("norm_type", norm_type)
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return [], torch.zeros(0)
    grads = [g.detach() for _, g in named]
    per_param = torch.stack([n.float() for n in foreach_norm(grads, norm_type)])
    position: dict[str, int] = {}
    index = [position.setdefault(layer_of(n), len(position)) for n, _ in named]
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

    Args:
        names: one name per value.
        values: numbers (host floats, e.g. from one ``.tolist()``).

    Raises:
        TypeError: ``names`` holds a non-string or ``values`` a non-number.
        ValueError: ``names`` and ``values`` differ in length.

    Example:
        >>> first_nonfinite(["a", "b", "c"], [1.0, float("nan"), float("inf")])
        'b'
    """
    for arg, seq, what in (("names", names, "names"), ("values", values, "numbers")):
        if not isinstance(seq, Sequence) or isinstance(seq, str | bytes):
            raise TypeError(f"`{arg}` must be a sequence of {what} (a list or tuple); got {describe(seq)}")
    check_same_length(("names", names), ("values", values))
    for i, (name, value) in enumerate(zip(names, values)):
        if not isinstance(name, str):
            raise TypeError(f"`names[{i}]` must be a string; got {describe(name)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"`values[{i}]` must be a number; got {describe(value)}")
    for name, value in zip(names, values):
        if not math.isfinite(value):
            return name
    return None


def _tensors(output: Any, depth: int = 3) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif depth > 0 and isinstance(output, Mapping):  # dicts and HuggingFace ModelOutputs
        for value in output.values():
            yield from _tensors(value, depth - 1)
    elif depth > 0 and isinstance(output, (list, tuple)):
        for value in output:
            yield from _tensors(value, depth - 1)


def _main_output(output: Any) -> torch.Tensor | None:
    """The tensor of a module output whose gradient is kept: the output itself, else the
    first tensor that requires grad in a tuple/list/dict/``ModelOutput`` (in HuggingFace
    models, the hidden states or ``last_hidden_state``/``logits``)."""
    return next((t for t in _tensors(output) if t.requires_grad), None)


class IntermediateGrads:
    """Keep the gradients of named modules' outputs (the ``retain_grad`` trick) for one backward.

    Inside the ``with`` block, a forward hook on each named module registers a tensor
    hook on its output; during backward the gradient is stored in `grads`. All
    hooks are removed when the block exits. For a module returning a tuple, list, dict
    or HuggingFace ``ModelOutput``, the gradient of its first tensor that requires grad
    is kept (a transformer layer's hidden states, an encoder's ``last_hidden_state``).
    Modules whose output held no such tensor during the last forward are listed in
    `without_grad`.

    While attached, code compiled with ``torch.compile`` runs eagerly
    (``torch.compiler.set_stance("force_eager")``): dynamo does not guard on module
    hooks, so a graph compiled while they were absent would run without calling them and
    `grads` would keep an older step's gradients. [`attach`][lightning_tricks.functional.IntermediateGrads.attach] also forgets the
    gradients kept so far, so a module whose hook did not fire has no entry rather than a
    stale one.

    Args:
        model: the network.
        names: the modules whose output gradients to keep, by the library's naming rule
            (qualified names, segment-wise globs, class names; a lone string is one name).

    Raises:
        TypeError: ``model`` is not a module or ``names`` not names.
        ValueError: if an entry selects no submodule of ``model``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> with IntermediateGrads(net, ["1"]) as ig:
        ...     net(torch.ones(4, 2)).sum().backward()
        >>> ig.grads["1"].shape, len(net[1]._forward_hooks)
        (torch.Size([4, 3]), 0)
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | str) -> None:
        check_module("model", model)
        self._modules = list(resolve_modules(model, names, "names").items())
        self.grads: dict[str, torch.Tensor] = {}
        self.without_grad: set[str] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stance: contextlib.AbstractContextManager[Any] | None = None

    @property
    def names(self) -> list[str]:
        """The qualified names of the modules watched, in model order."""
        return [n for n, _ in self._modules]

    def attach(self) -> None:
        """Register the forward hooks and run compiled code eagerly until [`detach`][lightning_tricks.functional.IntermediateGrads.detach] (idempotent)."""
        if self._handles:
            return
        self.grads = {}
        self._stance = _eager()
        self._stance.__enter__()
        for name, module in self._modules:
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def detach(self) -> None:
        """Remove every hook and restore the compiler's stance."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._stance is not None:
            stance, self._stance = self._stance, None
            stance.__exit__(None, None, None)

    def _forward_hook(self, name: str):
        def store(grad: torch.Tensor) -> None:
            self.grads[name] = grad.detach()

        def hook(module: nn.Module, args: object, output: object) -> None:
            tensor = _main_output(output) if torch.is_grad_enabled() else None
            if tensor is None:
                self.without_grad.add(name)
                return
            self.without_grad.discard(name)
            tensor.register_hook(store)

        return hook

    def __enter__(self) -> IntermediateGrads:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


class NonFiniteTracker:
    """Notice a NaN/Inf gradient on any step, without a host sync per step.

    Call [`update`][lightning_tricks.functional.NonFiniteTracker.update] after each backward (after unscaling, under a loss scaler): it
    computes each parameter's max-abs gradient with one fused ``_foreach_norm`` and folds
    "is any non-finite" into tensors on the device: the first such step and every
    parameter's gradient norm at that step. Nothing goes to the host until
    [`read`][lightning_tricks.functional.NonFiniteTracker.read], which you call when you log anyway (e.g. every N steps and at the end
    of an epoch): one transfer.

    The layer **nearest the origin** of a non-finite gradient is the non-finite layer
    that backward reached first. Backward runs from the loss towards the inputs and a
    NaN/Inf spreads from the layer where it arose to every layer before it in the
    forward pass, so that is the non-finite layer that ran *last in the forward pass*.
    The forward order is recorded once with [`record_forward_order`][lightning_tricks.functional.NonFiniteTracker.record_forward_order] (forward
    pre-hooks for one forward pass); without it the registration order of the modules
    stands in for the forward order.

    Args:
        model: the network.

    Raises:
        TypeError: ``model`` is not a module.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> tracker = NonFiniteTracker(net)
        >>> with tracker.record_forward_order():
        ...     net(torch.ones(1, 2)).sum().backward()
        >>> tracker.update(step=0)
        >>> net[0].weight.grad[0, 0] = float("nan")
        >>> tracker.update(step=1)
        >>> tracker.read()
        (1, '0', ['0'], 'NaN', 1)
    """

    def __init__(self, model: nn.Module) -> None:
        check_module("model", model)
        named = list(model.named_parameters())
        self._params = [p for _, p in named]
        self._layers = [layer_of(n) for n, _ in named]
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self._order = {layer: order.get(layer, -1) for layer in self._layers}
        self._model = model
        self._index_key: tuple[int, ...] | None = None
        self._index: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Forget what was seen (after it was reported)."""
        self._first_step: torch.Tensor | None = None
        self._first_norms: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    def record_forward_order(self) -> Any:
        """A context manager: the order in which layers run in the forward inside it is kept."""
        tracker = self
        modules = dict(self._model.named_modules())

        class _Record:
            def __enter__(self) -> None:
                seen: dict[str, int] = {}
                self.handles = [
                    modules[n].register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, len(seen)))
                    for n in dict.fromkeys(tracker._layers)
                    if n in modules
                ]
                self.seen = seen

            def __exit__(self, *exc: object) -> None:
                for h in self.handles:
                    h.remove()
                if self.seen:  # layers that did not run go first: backward reaches them last
                    tracker._order = {layer: self.seen.get(layer, -1) for layer in tracker._layers}

        return _Record()

    def update(self, step: int) -> None:
        """Fold the current gradients in (device ops only; no host sync).

        Raises:
            TypeError: ``step`` is not an int.
            ValueError: ``step`` is negative or does not fit in int64.
        """
        check_int("step", step, minimum=0, maximum=_MAX_STEP)
        idx, grads = [], []
        for i, p in enumerate(self._params):
            if p.grad is not None:
                idx.append(i)
                grads.append(p.grad.detach())
        if not idx:
            return
        norms = torch.stack([n.float() for n in foreach_norm(grads, math.inf)])
        device = norms.device
        if self._first_step is None or self._first_norms is None or self._count is None:
            self._first_step = torch.full((), -1, dtype=torch.long, device=device)
            self._first_norms = torch.zeros(len(self._params), device=device)
            self._count = torch.zeros((), dtype=torch.long, device=device)
        key = tuple(idx)
        if key != self._index_key or self._index is None or self._index.device != device:
            self._index_key, self._index = key, torch.tensor(idx, device=device)
        full = torch.zeros(len(self._params), device=device).index_copy(0, self._index, norms)
        bad = ~torch.isfinite(norms).all()
        new = bad & (self._first_step < 0)
        self._first_step = torch.where(
            new, torch.full((), step, dtype=torch.long, device=device), self._first_step
        )
        self._first_norms = torch.where(new, full, self._first_norms)
        self._count = self._count + bad.long()

    @property
    def count(self) -> torch.Tensor | None:
        """Steps with a non-finite gradient since the last [`reset`][lightning_tricks.functional.NonFiniteTracker.reset], on the device."""
        return self._count

    def pending(self) -> list[torch.Tensor]:
        """The device tensors [`read`][lightning_tricks.functional.NonFiniteTracker.read] needs, to be moved to the host with other numbers."""
        if self._first_step is None or self._first_norms is None or self._count is None:
            return []
        return [self._first_step.reshape(1).float(), self._count.reshape(1).float(), self._first_norms]

    def read(self, values: Sequence[float] | None = None) -> tuple[int, str, list[str], str, int] | None:
        """``(first_step, layer_nearest_origin, non_finite_layers, "NaN" or "infinite", num_steps)``,
        or ``None`` if every gradient was finite since the last [`reset`][lightning_tricks.functional.NonFiniteTracker.reset]. ``num_steps``
        counts the steps with a non-finite gradient.

        Args:
            values: the host copy of ``torch.cat(self.pending())``, if already transferred.

        Raises:
            TypeError: ``values`` is not a sequence of numbers.
            ValueError: ``values`` does not have the length of ``torch.cat(self.pending())``.
        """
        if values is None:
            pending = self.pending()
            if not pending:
                return None
            values = torch.cat(pending).tolist()
        else:
            values = self._check_values(values)
        first = int(values[0])
        if first < 0:
            return None
        norms = values[2:]
        bad_layers = list(
            dict.fromkeys(layer for layer, v in zip(self._layers, norms) if not math.isfinite(v))
        )
        nearest = max(bad_layers, key=lambda layer: self._order.get(layer, -1))
        kind = (
            "NaN"
            if any(math.isnan(v) for layer, v in zip(self._layers, norms) if layer == nearest)
            else "infinite"
        )
        return first, nearest, bad_layers, kind, int(values[1])

    def _check_values(self, values: Any) -> list[float]:
        if isinstance(values, torch.Tensor):
            values = values.tolist() if values.ndim == 1 else values
        if not isinstance(values, Sequence) or isinstance(values, str | bytes):
            raise TypeError(
                f"`values` must be the host copy (a list of numbers) of torch.cat(pending()); got {describe(values)}"
            )
        expected = 2 + len(self._params)
        if len(values) != expected:
            raise ValueError(
                f"`values` must hold {expected} numbers (first step, count, one norm per parameter), the "
                f"length of torch.cat(pending()); got {len(values)}"
            )
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TypeError(f"`values[{i}]` must be a number; got {describe(v)}")
        return list(values)
