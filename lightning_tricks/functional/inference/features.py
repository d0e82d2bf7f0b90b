"""Named intermediate outputs of any model through forward hooks (no FX tracing needed).

The functional core of [`FeaturePredict`][lightning_tricks.FeaturePredict] (the documented pair:
``FeaturePredict`` -> [`FeatureExtractor`][lightning_tricks.functional.FeatureExtractor] / [`extract_features`][lightning_tricks.functional.extract_features]). Layers are
named by the one naming rule of `lightning_tricks.functional._modules` (qualified
names, segment globs, class names, classes).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import check_bool, check_module, describe
from lightning_tricks.functional._model_errors import model_errors
from lightning_tricks.functional._modules import ModuleSpec, name_entries, resolve_modules

__all__ = ["FeatureExtractor", "extract_features"]


def detach_all(obj: Any) -> Any:
    """``obj`` with every tensor detached, through dataclasses (``ModelOutput``), mappings,
    named tuples, tuples and lists; containers keep their type."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: detach_all(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **fields)
    if isinstance(obj, Mapping):
        items = {k: detach_all(v) for k, v in obj.items()}
        try:
            return type(obj)(items)  # type: ignore[call-arg]  # Mapping subclasses may not take a dict: see except
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(detach_all(v) for v in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(detach_all(v) for v in obj)
    return obj


class _StopForward(Exception):
    """Raised by the hook of the last requested layer to end the forward pass early."""


def _resolve_layers(model: nn.Module, layers: ModuleSpec) -> dict[str, nn.Module]:
    """The modules ``layers`` selects: entry by entry (each entry's matches in model order),
    each module once."""
    out: dict[str, nn.Module] = {}
    for entry in name_entries("layers", layers):
        for name, module in resolve_modules(model, entry, "layers").items():
            out.setdefault(name, module)
    return out


class FeatureExtractor:
    """Capture the outputs of named submodules with forward hooks.

    Works on any model, including those ``torch.fx`` cannot trace (data-dependent
    control flow), because it only relies on ``register_forward_hook``. Use it as a
    context manager around your own forward call (hooks live only inside the ``with``
    block), or call it to run a forward pass and get the features back.

    If a module runs several times in one forward pass, the output of its last call is
    kept. With ``stop_early=True`` the forward pass is stopped (by an exception raised in
    a hook and caught by the extractor) as soon as every requested layer has produced an
    output, so layers after them cost nothing; the model's own output is then not
    available.

    Args:
        model: the model whose submodules to capture.
        layers: the submodules to capture: qualified names from ``model.named_modules()``
            (``"backbone.1"``), segment globs (``"backbone.*"``, ``"**.norm1"``), class
            names (``"Conv2d"``) or classes; a lone string is one entry. Features are
            keyed by qualified name, entry by entry (a glob's matches in model order).
        stop_early: stop the forward pass once every requested layer has run (only
            when called, see `__call__`).
        detach: store the output with every tensor detached (keeps no graph), also
            inside ``ModelOutput`` objects, dicts, tuples and lists.

    Raises:
        ValueError: if an entry selects no submodule (the message suggests near matches);
            when called, if a selected layer did not run in the forward pass.
        TypeError: for arguments of the wrong type.

    Attributes:
        layers: the qualified names of the captured submodules.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> feats = FeatureExtractor(model, ["0", "1"], stop_early=True)(torch.randn(3, 4))
        >>> {k: tuple(v.shape) for k, v in feats.items()}
        {'0': (3, 8), '1': (3, 8)}
        >>> with FeatureExtractor(model, ["1"]) as fx:
        ...     out = model(torch.randn(3, 4))
        >>> fx.features["1"].shape, len(model[1]._forward_hooks)
        (torch.Size([3, 8]), 0)
        >>> FeatureExtractor(model, "Linear").layers  # a class name selects every Linear
        ('0', '2')
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | type | Sequence[str | type],
        stop_early: bool = False,
        detach: bool = True,
    ) -> None:
        check_module("model", model)
        self.stop_early = check_bool("stop_early", stop_early)
        self.detach = check_bool("detach", detach)
        self.model = model
        self._modules = _resolve_layers(model, layers)
        self.layers: tuple[str, ...] = tuple(self._modules)
        self._handles: list[Any] = []
        self._stopping = False
        self.features: dict[str, torch.Tensor] = {}

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.detach:
                output = detach_all(output)
            self.features[name] = output
            if self._stopping and len(self.features) == len(self.layers):
                raise _StopForward

        return hook

    def __enter__(self) -> FeatureExtractor:
        if self._handles:
            raise RuntimeError("FeatureExtractor is already active; it cannot be entered twice")
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stopping = False

    def remove(self) -> None:
        """Remove the hooks (same as leaving the ``with`` block)."""
        self.__exit__(None, None, None)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run ``model(*args, **kwargs)`` and return ``{layer: output}`` in the order of ``layers``.

        With ``detach=False`` hooks keep the graph, so features can be back-propagated.

        Raises:
            ValueError: a selected layer did not run in the forward pass (names the layers),
                or the model raised a ``RuntimeError`` on the input (chained as the cause).
        """
        with self:
            self._stopping = self.stop_early
            shown = describe(args[0]) if len(args) == 1 and not kwargs else "the input"
            with contextlib.suppress(_StopForward), model_errors(f"running `model` on {shown}"):
                self.model(*args, **kwargs)
            missing = [n for n in self.layers if n not in self.features]
            if missing:
                raise ValueError(
                    f"`layers` selects layers the forward pass of {type(self.model).__name__} gives no output "
                    f"for: {missing} did not run in the forward pass; choose layers that run on these inputs"
                )
            return {n: self.features[n] for n in self.layers}


def extract_features(
    model: nn.Module,
    x: Any,
    layers: str | type | Sequence[str | type],
    stop_early: bool = True,
    detach: bool = True,
) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules of ``model`` for input ``x`` (functional form).

    Args:
        model: the model.
        x: the input of ``model``.
        layers: qualified names, segment globs, class names or classes (see
            [`FeatureExtractor`][lightning_tricks.functional.FeatureExtractor]).
        stop_early: stop the forward pass once every requested layer has run.
        detach: detach the captured outputs.

    Returns:
        ``{qualified name: output}``, in the order of ``layers``.

    Raises:
        ValueError: if an entry selects no submodule (with near matches suggested), or a
            selected layer did not run in the forward pass.
        TypeError: for arguments of the wrong type, or an ``x`` that holds no tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> extract_features(model, torch.randn(2, 4), ["1"])["1"].shape
        torch.Size([2, 8])
    """
    extractor = FeatureExtractor(model, layers, stop_early=stop_early, detach=detach)
    if not _holds_tensor(x):
        raise TypeError(
            f"`x` must be the model's input: a tensor, or a list/tuple/dict holding one; got {describe(x)}"
        )
    return extractor(x)


def _holds_tensor(obj: Any, depth: int = 3) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth and isinstance(obj, Mapping):
        return any(_holds_tensor(v, depth - 1) for v in obj.values())
    if depth and isinstance(obj, list | tuple):
        return any(_holds_tensor(v, depth - 1) for v in obj)
    return False
