"""``torch.compile`` chosen submodules in place, keeping their identity and ``state_dict`` keys.

``torch.compile(module)`` returns a wrapper whose ``state_dict`` keys gain an ``_orig_mod.``
prefix, and ``nn.Module.compile()`` silently compiles nothing for modules defined in
``torch.nn`` (``nn.Sequential``, ``nn.Linear``: their frames are skipped by dynamo).
[`compile_modules`][lightning_tricks.functional.compile_modules] instead replaces each target's ``forward`` by a picklable
object that compiles the original forward on first use: checkpoints, resume, DDP and
``pickle`` all see the plain module.

The functional core of [`Compile`][lightning_tricks.Compile] (a documented pair:
``Compile`` <-> [`compile_modules`][lightning_tricks.functional.compile_modules], undone by [`uncompile_modules`][lightning_tricks.functional.uncompile_modules]); the
callback compiles in ``setup`` and adds the compile-time report and the recompilation
warning.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

from lightning_tricks._compat import dynamo_backends
from lightning_tricks.functional._checks import check_bool, check_choice, check_module, check_str
from lightning_tricks.functional.perf._targets import (
    ForwardWrapper,
    TargetSpec,
    find_wrapped,
    select_modules,
    unwrap,
)

__all__ = ["COMPILE_MODES", "CompileMode", "CompiledForward", "compile_modules", "uncompile_modules"]

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
"""The ``torch.compile`` modes (``None`` means ``"default"``)."""
COMPILE_MODES: tuple[str | None, ...] = (None, *get_args(CompileMode))


class CompiledForward(ForwardWrapper):
    """A module's ``forward`` compiled with ``torch.compile`` on its first call.

    The compiled function is not pickled or deep-copied: a copy compiles again on first use.

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> CompiledForward(layer, {"backend": "eager"}).install()
        >>> layer(torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """

    def __init__(self, module: nn.Module, options: dict[str, Any]) -> None:
        super().__init__(module)
        self.options = dict(options)
        self._compiled: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = None
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            if self.original is not None:
                target = self.original
            else:
                target = type(self.module).forward.__get__(self.module)
            self._compiled = torch.compile(target, **self.options)
        return self._compiled(*args, **kwargs)


def compile_modules(
    model: nn.Module,
    targets: TargetSpec | None = None,
    *,
    mode: CompileMode | None = None,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    backend: str = "inductor",
) -> list[str]:
    """Compile ``model`` (``targets=None``) or its submodules chosen by ``targets``, in place.

    Compilation itself happens lazily, on the first forward of each target. Modules
    already compiled by this function are left alone.

    Args:
        model: the model to modify in place.
        targets: module classes, class names or globs over qualified submodule names
            (as in [`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing]); ``None`` compiles ``model``'s own
            forward.
        mode: ``torch.compile`` mode: ``None``/``"default"``, ``"reduce-overhead"`` (CUDA
            graphs), ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``.
        fullgraph: fail on graph breaks instead of splitting the graph.
        dynamic: ``True`` compiles shape-generic code up front, ``False`` specializes on
            every shape, ``None`` recompiles once as dynamic when a shape changes.
        backend: a ``torch._dynamo`` backend: ``"inductor"`` (fast code),
            ``"aot_eager"``/``"eager"`` (for debugging: no code generation).

    Returns:
        The qualified names of the modules newly compiled (``""`` for ``model`` itself).

    Raises:
        ValueError: for an unknown ``mode`` or ``backend``, or ``targets`` matching nothing.
        TypeError: for arguments of the wrong type.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> compile_modules(net, "Linear", backend="eager")
        ['0', '2']
        >>> net(torch.randn(3, 4)).shape
        torch.Size([3, 2])
        >>> "0.weight" in net.state_dict()  # keys unchanged (no "_orig_mod." prefix)
        True
        >>> uncompile_modules(net)
        ['0', '2']
    """
    model = check_module("model", model)
    check_choice("mode", mode, COMPILE_MODES)
    check_bool("fullgraph", fullgraph)
    if dynamic is not None:
        check_bool("dynamic", dynamic)
    check_backend(backend)
    options: dict[str, Any] = {"fullgraph": fullgraph, "dynamic": dynamic, "backend": backend}
    if mode not in (None, "default"):
        options["mode"] = mode
    chosen = [("", model)] if targets is None else select_modules(model, targets)
    done = {id(w.module) for _, w in find_wrapped(model, CompiledForward)}
    compiled = []
    for name, module in chosen:
        if id(module) in done:
            continue
        CompiledForward(module, options).install()
        compiled.append(name)
    return compiled


def check_backend(backend: Any) -> str:
    """Return ``backend`` if ``torch._dynamo`` knows it, else raise ``ValueError`` listing them.

    Example:
        >>> check_backend("eager")
        'eager'
    """
    check_str("backend", backend)
    known = dynamo_backends()
    if backend not in known:
        raise ValueError(f"`backend` must be one of {', '.join(known)}; got {backend!r}")
    return backend


def uncompile_modules(model: nn.Module) -> list[str]:
    """Undo [`compile_modules`][lightning_tricks.functional.compile_modules] on every submodule of ``model`` (and ``model`` itself).

    Args:
        model: a model modified by [`compile_modules`][lightning_tricks.functional.compile_modules].

    Returns:
        The qualified names of the modules restored.

    Raises:
        TypeError: ``model`` is not a module.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> compile_modules(net, backend="eager")
        ['']
        >>> uncompile_modules(net)
        ['']
    """
    return unwrap(check_module("model", model), CompiledForward)
