"""Select submodules by type name or by name glob, and swap a module's ``forward`` reversibly.

Shared by gradient checkpointing and compilation: both replace the ``forward`` of chosen
submodules with a small picklable object, so that the module keeps its identity and its
``state_dict`` keys (checkpoints, resume and DDP see the plain model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_tricks.functional._checks import check_str_sequence
from lightning_tricks.functional._modules import glob_match

TargetSpec = str | type | Sequence[str | type]


def _normalize(targets: Any) -> tuple[str | type, ...]:
    if isinstance(targets, type):
        return (targets,)
    if isinstance(targets, Sequence) and not isinstance(targets, str):
        if not targets:
            raise ValueError(f"`targets` must name at least one module type or name glob; got {targets!r}")
        out: list[str | type] = []
        for t in targets:
            if isinstance(t, type):
                out.append(t)
            else:
                out.extend(check_str_sequence("targets", t))
        return tuple(out)
    return check_str_sequence("targets", targets)


def _matches(name: str, module: nn.Module, target: str | type) -> bool:
    if isinstance(target, type):
        return isinstance(module, target)
    cls = type(module)
    return target in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}") or glob_match(name, target)


def select_modules(model: nn.Module, targets: TargetSpec) -> list[tuple[str, nn.Module]]:
    """The outermost submodules of ``model`` matched by ``targets``, in registration order.

    A target is a class, a class name (``"ResidualBlock"``) or a glob over qualified
    submodule names (``"backbone.blocks.*"``). A submodule inside a matched one is not
    returned again, so that nothing is wrapped twice.

    Raises:
        ValueError: if nothing matches; the message lists the available names and types.
    """
    wanted = _normalize(targets)
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix, _ in chosen):
            continue
        if any(_matches(name, module, t) for t in wanted):
            chosen.append((name, module))
    if not chosen:
        names = [n for n, _ in model.named_modules() if n]
        types = sorted({type(m).__name__ for _, m in model.named_modules()})
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(
            f"`targets` {[getattr(t, '__name__', t) for t in wanted]} matched no submodule; "
            f"available names: {shown or '(none)'}; available types: {', '.join(types)}"
        )
    return chosen


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
        self.module.forward = self  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self.original is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self.original  # type: ignore[method-assign]


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
