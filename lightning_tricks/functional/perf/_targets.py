"""Select the submodules to wrap, and swap a module's ``forward`` reversibly.

Shared by gradient checkpointing and compilation: both replace the ``forward`` of chosen
submodules with a small picklable object, so that the module keeps its identity and its
``state_dict`` keys (checkpoints, resume and DDP see the plain model). Which submodules
is decided by the one naming rule of `lightning_tricks.functional._modules`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_tricks.functional._modules import ModuleSpec, resolve_modules

TargetSpec = ModuleSpec
"""What a ``targets`` argument accepts: one entry (name, glob, class name, class) or a sequence."""


def select_modules(model: nn.Module, targets: TargetSpec) -> list[tuple[str, nn.Module]]:
    """The outermost submodules of ``model`` chosen by ``targets``, in model order.

    ``targets`` follows the one naming rule (`resolve_modules`):
    qualified names, segment-wise globs (``"backbone.blocks.*"``), class names
    (``"ResidualBlock"``) or classes; a lone string is one entry. A submodule inside a
    selected one is not returned again, so that nothing is wrapped twice.

    Raises:
        TypeError: if ``targets`` is not a name, a class or a sequence of them.
        ValueError: if ``targets`` is empty or one of its entries selects nothing (the
            message lists the available names and suggests the closest ones).

    Example:
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
        >>> [name for name, _ in select_modules(net, ["0", "Linear"])]
        ['0', '1']
    """
    return list(resolve_modules(model, targets, "targets", outermost=True).items())


class ForwardWrapper:
    """Base of the picklable objects that replace a module's ``forward`` on the instance.

    ``original`` is the instance-level ``forward`` that was there before (``None`` when the
    class's own ``forward`` was in use), so that wrappers stack and unwrap in order.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.original = module.__dict__.get("forward")

    def call_original(self, *args: Any, **kwargs: Any) -> Any:
        if self.original is not None:
            return self.original(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def install(self) -> None:
        # an instance attribute shadows the class's ``forward`` (``nn.Module.__call__`` looks it up)
        self.module.__dict__["forward"] = self

    def uninstall(self) -> None:
        if self.original is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.__dict__["forward"] = self.original


def find_wrapped(model: nn.Module, kind: type[ForwardWrapper]) -> list[tuple[str, ForwardWrapper]]:
    """``(name, wrapper)`` for each submodule whose outermost ``forward`` wrapper is a ``kind``."""
    out = []
    for name, module in model.named_modules():
        w = module.__dict__.get("forward")
        if isinstance(w, kind):
            out.append((name, w))
    return out


def unwrap(model: nn.Module, kind: type[ForwardWrapper], only: set[int] | None = None) -> list[str]:
    """Remove every ``kind`` wrapper from ``model`` (also ones below other wrappers).

    ``only``: if given, remove just the wrappers whose ``id()`` is in it.
    """
    removed = []
    for name, module in model.named_modules():
        prev = None
        w = module.__dict__.get("forward")
        while isinstance(w, ForwardWrapper):
            if isinstance(w, kind) and (only is None or id(w) in only):
                if prev is None:
                    w.uninstall()
                else:
                    prev.original = w.original
                removed.append(name)
            else:
                prev = w
            w = w.original
    return removed
