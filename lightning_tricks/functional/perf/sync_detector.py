"""Find host-device synchronisations and CPU-built tensors in a block of training code.

A `torch.overrides.TorchFunctionMode` sees the Python-level calls (``.item()``,
``bool(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``torch.zeros(n).to(device)``) and
a `torch.utils._python_dispatch.TorchDispatchMode` sees the ATen ops whose output
size depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ...) and
device-to-host copies. Each finding is attributed to the first stack frame of user code
(outside torch, Lightning and lightning_tricks) and aggregated per call site.

Works on CPU: the ops that would synchronise on an accelerator are recognised by what
they are, not by timing, so a CPU CI run catches them before a GPU run.

The functional core of [`SyncDetector`][lightning_tricks.SyncDetector], which runs sampled
training steps under [`detect_syncs`][lightning_tricks.functional.detect_syncs].
"""

from __future__ import annotations

import contextlib
import importlib.util
import linecache
import os
import sys
import sysconfig
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_tricks.functional._checks import (
    check_bool,
    check_device,
    check_on_error,
    check_str,
    check_str_sequence,
    report_problem,
)

__all__ = ["SyncDetectedError", "SyncReport", "detect_syncs"]

_HOST = "copies a tensor to the host: a host-device sync on an accelerator"
_METHODS = {
    "item": f"`.item()` {_HOST}",
    "__bool__": f"`bool(tensor)` / `if tensor:` {_HOST}",
    "__int__": f"`int(tensor)` {_HOST}",
    "__float__": f"`float(tensor)` {_HOST}",
    "__index__": f"using a tensor as a Python index {_HOST}",
    "__format__": f"formatting a tensor (f-string) {_HOST}",
    "__repr__": f"printing a tensor (`print(tensor)`, `str(tensor)`, `repr(tensor)`) {_HOST}",
    "tolist": f"`.tolist()` {_HOST}",
    "numpy": f"`.numpy()` {_HOST}",
    "cpu": f"`.cpu()` {_HOST}",
}
_FACTORIES = {
    "tensor", "as_tensor", "from_numpy", "zeros", "ones", "empty", "full", "arange", "rand", "randn",
    "randint", "randperm", "linspace", "logspace", "eye", "scalar_tensor",
}  # fmt: skip
_MOVES = {"to", "cuda", "type_as"}
_DATA_DEPENDENT = {
    "nonzero": "`nonzero` / `torch.where(cond)` has a data-dependent size: a sync",
    "argwhere": "`argwhere` has a data-dependent size: a sync",
    "masked_select": "`masked_select` has a data-dependent size: a sync",
    "_unique": "`unique` has a data-dependent size: a sync",
    "_unique2": "`unique` has a data-dependent size: a sync",
    "unique_dim": "`unique` has a data-dependent size: a sync",
    "unique_consecutive": "`unique_consecutive` has a data-dependent size: a sync",
    "bincount": "`bincount` sizes its output from the data: a sync",
    "equal": "`torch.equal` returns a Python bool: a sync",
    "is_nonzero": "`bool(tensor)` returns a Python bool: a sync",
    "_local_scalar_dense": f"reading a tensor as a Python number {_HOST}",
}
_MOVED = (
    "a tensor built on the CPU is moved with `.{name}()`: create it on the device instead "
    "(`device=...` or `torch.*_like`)"
)
_BOOL_INDEX = "indexing with a boolean mask has a data-dependent size: a sync (use `torch.where(mask, a, b)`)"


class SyncDetectedError(RuntimeError):
    """Raised by [`detect_syncs`][lightning_tricks.functional.detect_syncs] with ``on_error="raise"`` at the first finding.

    Example:
        >>> isinstance(SyncDetectedError("x.py:3: `.item()`"), RuntimeError)
        True
    """


@dataclass
class _Finding:
    kind: str
    what: str
    site: str
    function: str
    code: str
    count: int = 0


class SyncReport:
    """Findings aggregated per call site, across any number of [`detect_syncs`][lightning_tricks.functional.detect_syncs] blocks.

    Example:
        >>> report = SyncReport()
        >>> with detect_syncs(report):
        ...     n = torch.ones(3).sum().item()
        >>> first = report.findings[0]
        >>> report.total, first.get("kind")
        (1, 'sync')
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], _Finding] = {}
        self.blocks = 0

    @property
    def total(self) -> int:
        """Number of findings, counting repeats."""
        return sum(f.count for f in self._by_key.values())

    @property
    def findings(self) -> list[dict[str, Any]]:
        """One dict per (call site, kind of problem), most frequent first."""
        items = sorted(self._by_key.values(), key=lambda f: -f.count)  # stable: first seen first
        return [dict(vars(f)) for f in items]

    def add(self, kind: str, what: str, site: str, function: str = "", code: str = "") -> _Finding:
        """Count one finding at ``site`` (``"file:line"``).

        Raises:
            TypeError: an argument is not a string (``function`` and ``code`` may be empty).
        """
        for arg, value in (("kind", kind), ("what", what), ("site", site)):
            check_str(arg, value)
        check_str("function", function, allow_empty=True)
        check_str("code", code, allow_empty=True)
        finding = self._by_key.setdefault((site, what), _Finding(kind, what, site, function, code))
        finding.count += 1
        return finding

    def clear(self) -> None:
        """Forget every finding."""
        self._by_key.clear()
        self.blocks = 0

    def format(self, title: str = "Host-device synchronisations found") -> str:
        """A human-readable report, one call site per entry; empty string if nothing was found."""
        check_str("title", title, allow_empty=True)
        if not self._by_key:
            return ""
        lines = [f"{title} ({self.total} in {self.blocks} inspected block(s)):"]
        for f in self.findings:
            where = f"{f['site']} in {f['function']}" if f["function"] else f["site"]
            lines.append(f"  {where}: {f['what']} (x{f['count']})")
            if f["code"]:
                lines.append(f"      {f['code']}")
        return "\n".join(lines)


def _package_dir(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "")


_TORCH_DIR = os.path.join(os.path.dirname(torch.__file__), "")
_SELF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "")
_STDLIB_DIR = os.path.join(sysconfig.get_paths()["stdlib"], "")
_FRAMEWORK_DIRS: tuple[str, ...] | None = None
_SKIP_DIRS: tuple[str, ...] | None = None


def _dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    global _FRAMEWORK_DIRS, _SKIP_DIRS
    if _FRAMEWORK_DIRS is None or _SKIP_DIRS is None:
        names = ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities")
        _FRAMEWORK_DIRS = tuple(d for d in map(_package_dir, names) if d)
        _SKIP_DIRS = tuple(d for d in (_TORCH_DIR, _SELF_DIR, _package_dir("torchmetrics")) if d)
    return _FRAMEWORK_DIRS, _SKIP_DIRS


def _user_site() -> tuple[str, str, str] | None:
    """(``file:line``, function, source line) of the innermost user frame; ``None`` when the
    finding comes from Lightning's own code (e.g. ``self.log``), which is not the user's."""
    framework, skip = _dirs()
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(framework):
            return None
        lib = "site-packages" in name or "dist-packages" in name
        internal = (
            name.startswith(skip) or name.startswith("<frozen") or (name.startswith(_STDLIB_DIR) and not lib)
        )
        if not internal:
            code = linecache.getline(name, frame.f_lineno).strip()
            return f"{name}:{frame.f_lineno}", frame.f_code.co_name, code
        frame = frame.f_back
    return None


class _State:
    def __init__(
        self, report: SyncReport, device: torch.device | None, on_error: str, ignore: tuple[str, ...]
    ) -> None:
        self.report, self.device, self.on_error, self.ignore = report, device, on_error, ignore
        self.block = SyncReport()  # this block's findings only, for its warning
        self.suppress = 0
        self.fresh: dict[int, weakref.ref] = {}

    def hit(self, kind: str, what: str) -> None:
        site = _user_site()
        if site is None or any(pattern in site[0] for pattern in self.ignore):
            return
        self.report.add(kind, what, *site)
        self.block.add(kind, what, *site)
        if self.on_error == "raise":
            report_problem("raise", f"{site[0]} in {site[1]}: {what}\n    {site[2]}", SyncDetectedError)


def _is_move_target(arg: Any, device: torch.device | None) -> bool:
    if isinstance(arg, torch.Tensor):
        arg = arg.device
    elif isinstance(arg, str | int) and not isinstance(arg, bool):
        try:
            arg = torch.device(arg)
        except (RuntimeError, TypeError):
            return False
    if not isinstance(arg, torch.device):
        return False
    return arg.type != "cpu" or (device is not None and device.type == "cpu")


class _FunctionMode(TorchFunctionMode):
    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        state, name = self.state, getattr(func, "__name__", "")
        if state.suppress:
            return func(*args, **kwargs)
        found = False
        if name in _METHODS:
            state.hit("sync", _METHODS[name])
            found = True
        elif name in _MOVES and args and isinstance(args[0], torch.Tensor):
            ref = state.fresh.get(id(args[0]))
            targets = [*args[1:], kwargs.get("device")] if name != "cuda" else ["cuda"]
            if (
                ref is not None
                and ref() is args[0]
                and any(_is_move_target(a, state.device) for a in targets)
            ):
                state.hit("cpu_built", _MOVED.format(name=name))
                found = True
        # what we reported is not reported again by the dispatch mode underneath
        state.suppress += found
        try:
            out = func(*args, **kwargs)
        finally:
            state.suppress -= found
        made_on_cpu = isinstance(out, torch.Tensor) and out.device.type == "cpu"
        if name in _FACTORIES and made_on_cpu and kwargs.get("device") is None:
            state.fresh[id(out)] = weakref.ref(out)
        return out


class _DispatchMode(TorchDispatchMode):
    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        state = self.state
        if not state.suppress:
            name = func._overloadpacket.__name__
            if name in _DATA_DEPENDENT:
                state.hit("sync", _DATA_DEPENDENT[name])
            elif (
                name == "repeat_interleave"
                and func._overloadname == "Tensor"
                and not kwargs.get("output_size")
            ):
                state.hit(
                    "sync", "`repeat_interleave` without `output_size` has a data-dependent size: a sync"
                )
            elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and len(args) > 1:
                if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
                    state.hit("sync", _BOOL_INDEX)
            elif name == "_to_copy" and args and args[0].device.type != "cpu":
                if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu":
                    state.hit("sync", f"a device-to-host copy {_HOST}")
            elif (
                name == "copy_"
                and len(args) > 1
                and isinstance(args[1], torch.Tensor)
                and args[0].device.type == "cpu"
                and args[1].device.type != "cpu"
            ):
                state.hit("sync", f"a device-to-host `copy_` {_HOST}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def detect_syncs(
    report: SyncReport | None = None,
    *,
    device: torch.device | str | None = None,
    on_error: Literal["warn", "raise", "ignore"] = "warn",
    cuda_sync_debug: bool = True,
    ignore: Sequence[str] = (),
) -> Iterator[SyncReport]:
    """Record host-device syncs and CPU-built tensors in the block, per user call site.

    Recognised: ``.item()``, ``bool()``/``int()``/``float()`` of a tensor (``if loss > 0:``),
    f-string formatting, ``print(tensor)``/``str(tensor)``/``repr(tensor)``, ``.tolist()``,
    ``.numpy()``, ``.cpu()``, device-to-host copies,
    ``nonzero``/``torch.where(cond)``, boolean-mask indexing and assignment,
    ``masked_select``, ``unique``, ``bincount``, ``torch.equal``, ``repeat_interleave``
    without ``output_size``, and tensors made by a factory (``torch.tensor``,
    ``torch.zeros``, ...) without ``device=`` and then moved with ``.to()``/``.cuda()``.
    On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` (``"error"`` with
    ``on_error="raise"``) is also on inside the block (the previous mode is restored
    after), so syncs inside kernels we do not know are reported by PyTorch itself.

    Args:
        report: where findings accumulate; a new [`SyncReport`][lightning_tricks.functional.SyncReport] if ``None``.
        device: the model's device; on a CPU run, ``.to(device)`` of a CPU-built tensor is
            then recognised although it moves nothing.
        on_error: ``"warn"``: one warning listing the block's call sites when the block
            ends; ``"raise"``: raise [`SyncDetectedError`][lightning_tricks.functional.SyncDetectedError] at the first finding;
            ``"ignore"``: only record in ``report``.
        cuda_sync_debug: on CUDA, also turn on PyTorch's sync debug mode in the block.
        ignore: call sites to skip: substrings of ``"path/to/file.py:line"``.

    Returns:
        A context manager yielding the report.

    Raises:
        SyncDetectedError: with ``on_error="raise"``, naming the call site.
        ValueError: for an unknown ``on_error``.

    Example:
        >>> with detect_syncs(on_error="ignore") as report:
        ...     x = torch.randn(8)
        ...     positives = x[x > 0]
        ...     ids = torch.arange(4).to("cpu")
        >>> report.total
        1
    """
    action = check_on_error(on_error)
    check_bool("cuda_sync_debug", cuda_sync_debug)
    ignore = check_str_sequence("ignore", ignore, allow_empty=True)
    report = SyncReport() if report is None else report
    if not isinstance(report, SyncReport):
        raise TypeError(f"`report` must be a SyncReport or None; got {type(report).__name__}")
    dev = check_device("device", device) if device is not None else None
    state = _State(report, dev, action, ignore)
    report.blocks += 1
    use_cuda = cuda_sync_debug and dev is not None and dev.type == "cuda" and torch.cuda.is_available()
    previous = torch.cuda.get_sync_debug_mode() if use_cuda else 0
    with contextlib.ExitStack() as stack:
        if use_cuda:
            torch.cuda.set_sync_debug_mode("error" if action == "raise" else "warn")
            stack.callback(torch.cuda.set_sync_debug_mode, previous)
        with _FunctionMode(state), _DispatchMode(state):
            yield report
    if action == "warn" and state.block.total:
        state.block.blocks = 1
        # stacklevel: this generator, contextlib's __exit__, the caller's `with`
        warnings.warn(state.block.format("detect_syncs: host-device syncs in the block"), stacklevel=3)
