"""A lean non-reentrant checkpoint: the eager path of `gradient_checkpointing`.

`checkpoint` below does what ``torch.utils.checkpoint.checkpoint(fn, *args,
use_reentrant=False, early_stop=True)`` does for a block of a model, with a fraction of
its Python bookkeeping per call (measured: 0.55 ms of extra time per block and step on
a width-128 MLP block of about 3 ms went down to about 0.3 ms, most of it the recomputed
forward's own dispatch; ``benchmarks/gradient_checkpointing.py``):

* The forward runs with grad enabled under saved-tensor hooks whose pack hook records
  the shape, dtype and device of each tensor autograd wants to save and returns its
  index instead of the tensor. The graph is the plain model's; only its saved tensors
  are missing.
* The first unpack in backward re-runs the block from its inputs under a second pair of
  hooks that store each saved tensor (detached) under its index, and stops as soon as
  the last one is stored (early stop). Each unpack hands its tensor back once and frees
  it; a tensor asked for again (a second backward after ``retain_graph=True``,
  ``torch.autograd.grad`` inside the forward) triggers another recomputation.
* As in PyTorch: the recomputation runs under the forward's autocast state and, when
  asked, its RNG state (CPU and the inputs' accelerator); a recomputed tensor whose
  shape, dtype or device differs from the forward's, a recomputation that saves fewer
  tensors, or an input tensor modified in place between forward and backward raise
  `torch.utils.checkpoint.CheckpointError` / ``RuntimeError`` instead of giving wrong
  gradients.

What it leaves to PyTorch's implementation: ``torch.compile`` (the wrapper calls
`torch.utils.checkpoint.checkpoint` while compiling), the ``debug`` and
``determinism_check`` options and the ``torch.device`` context manager (a block that
creates tensors without a device under ``with torch.device(...)`` sees the default
device when recomputed; its mismatched devices raise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import CheckpointError, get_device_states, set_device_states

__all__: list[str] = []  # private helpers of gradient_checkpointing


class _StopRecomputation(Exception):
    """Raised by the recomputation's pack hook once every saved tensor is back."""


def _identity(x: Any) -> Any:
    return x


class _Frame:
    """One checkpointed call: its inputs, what its forward saved, what backward recomputed."""

    __slots__ = (
        "args",
        "autocast",
        "count",
        "fn",
        "kwargs",
        "metas",
        "name",
        "recompute_context",
        "rng",
        "values",
        "versions",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        recompute_context: Any,
        name: str,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.versions = [(a, a._version) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        self.recompute_context = recompute_context
        self.autocast: tuple[Any, ...] = ()
        self.rng: tuple[Any, ...] | None = None
        self.metas: list[tuple[Any, ...]] = []
        self.values: dict[int, torch.Tensor] = {}
        self.count = 0
        self.name = name

    # ------------------------------------------------------------------ forward
    def pack(self, x: torch.Tensor) -> int:
        metas = self.metas
        metas.append((x.shape, x.dtype, x.device))
        return len(metas) - 1

    # ------------------------------------------------------------------ backward
    def unpack(self, i: int) -> torch.Tensor:
        values = self.values
        if i not in values:  # first use in this backward, or handed back already
            self.recompute()
        try:
            return values.pop(i)
        except KeyError:
            raise CheckpointError(
                f"the recomputation of checkpointed {self.name} saved {self.count} tensors for "
                f"backward, its forward {len(self.metas)}: the block does not compute the same "
                "thing twice (it branches on state that its first run changed?)"
            ) from None

    def repack(self, x: torch.Tensor) -> torch.Tensor:
        i = self.count
        self.count = i + 1
        x = x.detach() if x.requires_grad else x
        metas = self.metas
        if metas[i] != (x.shape, x.dtype, x.device):
            raise CheckpointError(
                f"the recomputation of checkpointed {self.name} saved a tensor of shape "
                f"{tuple(x.shape)}, {x.dtype} on {x.device} where its forward saved "
                f"{tuple(metas[i][0])}, {metas[i][1]} on {metas[i][2]} (tensor {i}): the block "
                "does not compute the same thing twice"
            )
        self.values[i] = x
        if i + 1 == len(metas):
            raise _StopRecomputation
        return x

    def recompute(self) -> None:
        for tensor, version in self.versions:
            if tensor._version != version:
                raise RuntimeError(
                    f"an input of checkpointed {self.name} was modified by an inplace operation "
                    f"after the block's forward (version {version}, now {tensor._version}): its "
                    "recomputation would see other values and give wrong gradients. Clone the "
                    "input before changing it, or do not checkpoint this block."
                )
        self.count = 0
        with contextlib.ExitStack() as stack:
            for device_type, enabled, dtype, cache in self.autocast:
                stack.enter_context(
                    torch.amp.autocast(device_type, enabled=enabled, dtype=dtype, cache_enabled=cache)
                )
            if self.rng is not None:
                device_type, cpu_state, devices, states = self.rng
                stack.enter_context(torch.random.fork_rng(devices=devices, device_type=device_type))
                torch.set_rng_state(cpu_state)
                if devices:
                    set_device_states(devices, states, device_type=device_type)
            if self.recompute_context is not None:
                stack.enter_context(self.recompute_context)
            stack.enter_context(saved_tensors_hooks(self.repack, _identity))
            stack.enter_context(torch.enable_grad())
            with contextlib.suppress(_StopRecomputation):
                self.fn(*self.args, **self.kwargs)


def _autocast_state(device_type: str) -> tuple[Any, ...]:
    """The autocast settings to replay: CPU's and those of ``device_type``'s accelerator."""
    cache = torch.is_autocast_cache_enabled()
    types = ("cpu",) if device_type == "cpu" else ("cpu", device_type)
    return tuple(
        (t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t), cache)
        for t in types
        if torch.amp.is_autocast_available(t)
    )


def checkpoint(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    device_type: str,
    preserve_rng_state: bool,
    context_fn: Callable[[], tuple[Any, Any]] | None = None,
    name: str = "block",
) -> Any:
    """``fn(*args, **kwargs)`` with its saved tensors recomputed in backward (see the
    module docstring).

    ``device_type``: of the inputs (``"cpu"``, ``"cuda"``, ...): whose autocast and RNG
    state to replay besides the CPU's. ``context_fn`` returns ``(forward_context,
    recompute_context)`` as for `torch.utils.checkpoint.checkpoint`; ``name`` names the
    block in errors. Unlike PyTorch's, tensors passed by keyword count as inputs too (their
    devices' RNG states are replayed and in-place changes to them refused).
    """
    forward_context, recompute_context = context_fn() if context_fn is not None else (None, None)
    frame = _Frame(fn, args, kwargs, recompute_context, name)
    frame.autocast = _autocast_state(device_type)
    if preserve_rng_state:
        devices: list[int] = []
        states: list[torch.Tensor] = []
        if device_type != "cpu" and getattr(getattr(torch, device_type, None), "_initialized", False):
            devices, states = get_device_states(*args, *kwargs.values())
        frame.rng = (device_type, torch.get_rng_state(), devices, states)
    with saved_tensors_hooks(frame.pack, frame.unpack):
        if forward_context is None:
            return fn(*args, **kwargs)
        with forward_context:
            return fn(*args, **kwargs)
