"""Gradient (activation) checkpointing of chosen submodules, in place and reversibly.

Each target's ``forward`` is replaced by a picklable wrapper that runs the original
forward under non-reentrant activation checkpointing, so its activations are recomputed
in backward instead of stored: in eager mode through the lean checkpoint of the private
``_checkpoint_frame`` module (PyTorch's non-reentrant semantics at about half its Python
cost per call), under ``torch.compile`` through `torch.utils.checkpoint.checkpoint`.
The module keeps its identity and ``state_dict`` keys, so this works before DDP wraps the
model, with frozen layers, and with checkpoints saved by the plain model.

Two modes:

* ``"full"``: keep only the block's inputs; recompute the whole block in backward.
* ``"selective"``: also keep the outputs of the expensive ops (matrix multiplies,
  convolutions, fused attention; [`SAVED_OPS`][lightning_tricks.functional.perf.gradient_checkpointing.SAVED_OPS]) and recompute only the cheap ones
  (activations, norms, dropout, elementwise ops): in eager mode through two lean dispatch
  modes of this module, under ``torch.compile`` through PyTorch's selective-checkpoint
  policies (`torch.utils.checkpoint.create_selective_checkpoint_contexts`).

Side effects of the recomputation are undone: running statistics of norm layers
(``BatchNorm``, tracked ``InstanceNorm``) are updated once per step, by the original
forward only, and the RNG state is replayed only for blocks that can draw random numbers
(the helpers live in the private ``_checkpoint_side_effects`` module).

Entry points of [`lightning_tricks.GradientCheckpointing`][lightning_tricks.GradientCheckpointing] (``perf/gradient_checkpointing.py``):
[`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing] in its ``setup``, the removal of
[`remove_gradient_checkpointing`][lightning_tricks.functional.remove_gradient_checkpointing] (limited to the wrappers it installed) in its ``teardown``.
Which submodules ``targets`` selects is the one naming rule
(`lightning_tricks.functional._modules.resolve_modules`, outermost matches only).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from lightning_tricks._compat import op_overload_type, version_sharing_detach_guard
from lightning_tricks.functional._checks import check_bool, check_choice, check_module
from lightning_tricks.functional.perf._checkpoint_frame import checkpoint as lean_checkpoint
from lightning_tricks.functional.perf._checkpoint_side_effects import (
    Both,
    FrozenRunningStats,
    first_device_type,
    random_sources,
    rng_state,
    tracks_running_stats,
)
from lightning_tricks.functional.perf._targets import (
    ForwardWrapper,
    TargetSpec,
    find_wrapped,
    select_modules,
    unwrap,
)

__all__ = [
    "SAVED_OPS",
    "CheckpointMode",
    "CheckpointedForward",
    "apply_gradient_checkpointing",
    "remove_gradient_checkpointing",
]

CheckpointMode = Literal["full", "selective"]
MODES: tuple[str, ...] = get_args(CheckpointMode)

_SAVED_OP_NAMES = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "addbmm",
    "_addmm_activation",
    "_scaled_mm",
    "_int_mm",
    "convolution",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_flash_attention_forward",
    "_efficient_attention_forward",
)
SAVED_OPS: frozenset[Any] = frozenset(
    getattr(torch.ops.aten, name).default for name in _SAVED_OP_NAMES if hasattr(torch.ops.aten, name)
)
"""The ``aten`` ops whose outputs ``mode="selective"`` keeps (every other op is recomputed)."""


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


# --------------------------------------------------------------------------- selective, eager
#
# In eager mode selective checkpointing runs two lean dispatch modes instead of PyTorch's
# `create_selective_checkpoint_contexts`, whose per-op bookkeeping (policy context objects,
# compile checks, a storage entry for every op) costs about as much as the recomputation
# it saves on blocks of a few milliseconds. Ours look at one thing per op: is it in
# `SAVED_OPS`. The forward keeps those outputs (detached, sharing the version counter);
# the recomputation hands each back once, in call order per op, and frees it. An output
# that was modified in place since the forward, or one missing (a second backward with
# `retain_graph=True`, a recomputation that takes another path), is computed again
# instead of raising: the result is the plain model's either way.

_SAVED_IDS = frozenset(id(op) for op in SAVED_OPS)
_VERSION_SHARING = version_sharing_detach_guard()
_OP_OVERLOAD = op_overload_type()


def _keep(out: Any) -> tuple[Any, Any]:
    """``(detached out, versions)``: tensors detached below autograd sharing the version counter."""
    with _VERSION_SHARING():  # type: ignore[misc]
        if isinstance(out, torch.Tensor):
            return out.detach(), out._version
        leaves, spec = tree_flatten(out)
        kept = [t.detach() if isinstance(t, torch.Tensor) else t for t in leaves]
    return tree_unflatten(kept, spec), [t._version if isinstance(t, torch.Tensor) else None for t in leaves]


def _unchanged(kept: Any, versions: Any) -> bool:
    if isinstance(kept, torch.Tensor):
        return bool(kept._version == versions)
    leaves = tree_flatten(kept)[0]
    return all(v is None or t._version == v for t, v in zip(leaves, versions))


def _run(func: Any, args: Any, kwargs: Any) -> Any:
    # a plain OpOverload's __call__ only forwards to its `_op`: calling that directly
    # halves the Python cost the mode adds to each op
    if type(func) is _OP_OVERLOAD:
        return func._op(*args, **(kwargs or {}))
    return func(*args, **(kwargs or {}))


class _KeepSavedOps(TorchDispatchMode):
    """Forward of a selectively checkpointed block: keeps the outputs of `SAVED_OPS`."""

    def __init__(self, store: dict[Any, list[Any]]) -> None:
        super().__init__()
        self.store = store

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = _run(func, args, kwargs)
        if id(func) in _SAVED_IDS:
            self.store.setdefault(func, []).append(_keep(out))
        return out


class _ReuseSavedOps(TorchDispatchMode):
    """Recomputation of a selectively checkpointed block: `SAVED_OPS` return what the
    forward kept (once each); every other op runs."""

    def __init__(self, store: dict[Any, list[Any]]) -> None:
        super().__init__()
        self.store = store
        self.calls: dict[Any, int] = {}

    def __enter__(self) -> Any:
        self.calls.clear()
        return super().__enter__()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if id(func) in _SAVED_IDS:
            i = self.calls.get(func, 0)
            self.calls[func] = i + 1
            kept = self.store.get(func, [])
            if i < len(kept) and kept[i] is not None:
                out, versions = kept[i]
                kept[i] = None  # handed back once: the recomputed graph holds it from here
                if _unchanged(out, versions):
                    return out
        return _run(func, args, kwargs)


def _selective_contexts() -> tuple[Any, Any]:
    store: dict[Any, list[Any]] = {}
    return _KeepSavedOps(store), _ReuseSavedOps(store)


# under torch.compile the recomputation is part of the compiled backward graph, where buffer
# mutations are functionalized (applied once, by the forward): only the policy is needed
_SELECTIVE_CONTEXT_FN = functools.partial(create_selective_checkpoint_contexts, _selective_policy)


# --------------------------------------------------------------------------- the wrapper


class CheckpointedForward(ForwardWrapper):
    """A module's ``forward`` run under non-reentrant activation checkpointing.

    Only in training mode with grad enabled; in eval mode or under ``torch.no_grad()`` /
    ``torch.inference_mode()`` it calls the original forward directly (nothing to save).
    What the block contains (norm layers with running statistics, sources of randomness)
    is read once, here; a call only checks the current dropout rates.

    Args:
        module: the block to checkpoint.
        mode: ``"full"`` or ``"selective"`` (see [`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing]).
        preserve_rng_state: replay the RNG state in the recomputation; ``None`` decides
            per block (see [`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing]).

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> CheckpointedForward(layer, mode="selective").install()
        >>> layer(torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self, module: nn.Module, mode: CheckpointMode = "full", preserve_rng_state: bool | None = None
    ) -> None:
        super().__init__(module)
        self.mode = check_choice("mode", mode, MODES)
        self.preserve_rng_state = (
            None if preserve_rng_state is None else check_bool("preserve_rng_state", preserve_rng_state)
        )
        norms = [m for m in module.modules() if tracks_running_stats(m)]
        self._stats = FrozenRunningStats(norms) if norms else None
        self._always_random, self._rate_sources = random_sources(module)
        # set by the first checkpointed call when nothing above says the block is random:
        # whether that call drew random numbers all the same (a functional dropout, noise)
        self._draws_anyway: bool | None = None
        self._label = f"block `{type(module).__name__}`"

    def _contexts(self) -> tuple[Any, Any]:
        if self.mode == "full":
            return contextlib.nullcontext(), self._stats
        caching, cached = _selective_contexts() if _VERSION_SHARING else _SELECTIVE_CONTEXT_FN()
        return caching, cached if self._stats is None else Both(self._stats, cached)

    def _may_draw(self) -> bool:
        if self._always_random or self._draws_anyway:
            return True
        return any(getattr(obj, attr) > 0 for obj, attr in self._rate_sources)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.module.training and torch.is_grad_enabled()):
            return self.call_original(*args, **kwargs)
        if torch.compiler.is_compiling():
            fn = functools.partial(self.call_original, **kwargs) if kwargs else self.call_original
            preserve = self.preserve_rng_state
            if preserve is None:
                preserve = self._draws_anyway is not False or self._may_draw()
            if self.mode == "full":
                return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve)
            return checkpoint(
                fn, *args, use_reentrant=False, preserve_rng_state=preserve, context_fn=_SELECTIVE_CONTEXT_FN
            )
        context_fn = None if self.mode == "full" and self._stats is None else self._contexts
        device_type = first_device_type(args, kwargs)
        # the first call of a block that looks deterministic preserves the RNG state anyway
        # and looks whether it drew random numbers: that decides for all later calls
        probe = False
        if self.preserve_rng_state is not None:
            preserve = self.preserve_rng_state
        else:
            preserve = self._may_draw()
            if not preserve and self._draws_anyway is None:
                preserve = probe = True
        before = rng_state(device_type) if probe else None
        out = lean_checkpoint(
            self.call_original,
            args,
            kwargs,
            device_type=device_type,
            preserve_rng_state=preserve,
            context_fn=context_fn,
            name=self._label,
        )
        if probe:
            after = rng_state(device_type)
            self._draws_anyway = (
                before is None or after is None or any(not torch.equal(a, b) for a, b in zip(before, after))
            )
        return out


def _iter_new(model: nn.Module, targets: TargetSpec) -> Iterator[tuple[str, nn.Module, Any]]:
    existing = {id(w.module): w for _, w in find_wrapped(model, CheckpointedForward)}
    for name, module in select_modules(model, targets):
        yield name, module, existing.get(id(module))


def apply_gradient_checkpointing(
    model: nn.Module,
    targets: TargetSpec,
    mode: CheckpointMode = "full",
    preserve_rng_state: bool | None = None,
) -> list[str]:
    """Checkpoint the activations of the submodules of ``model`` chosen by ``targets``.

    Targets follow the one naming rule: qualified submodule names, globs over them
    (``"backbone.blocks.*"``: ``*`` within one dotted segment, ``**`` across), class names
    (``"ResidualBlock"``) or classes; a lone string is one entry. Every entry must select
    a submodule; only the outermost match of a nested chain is wrapped. Applying twice wraps nothing twice. Gradients are those of the plain model
    (dropout draws the same mask in the recomputation), and norm layers update their
    running statistics once per step, as in the plain model. Call it before wrapping the
    model in DDP/FSDP.

    ``mode="full"`` keeps only each block's inputs and re-runs the whole block in
    backward: the least memory, one extra forward of the block. ``mode="selective"``
    also keeps the outputs of [`SAVED_OPS`][lightning_tricks.functional.perf.gradient_checkpointing.SAVED_OPS] (matmuls, convolutions, fused attention)
    and recomputes only the cheap ops between them (activations, norms, dropout).

    ``preserve_rng_state=None`` (default) replays the RNG state in the recomputation only
    for blocks that can draw random numbers in training: a block with a dropout-like
    module (``nn.Dropout*``, ``RReLU``, classes named ``*Drop*``/``*Stochastic*``/
    ``*Noise*``) or a numeric attribute named ``*drop*`` (also in a HF ``config``) whose
    value is > 0 at call time; and, as a safety net, a block whose first checkpointed call
    advanced the CPU/CUDA random generators. ``True``/``False`` force it for every block.

    Args:
        model: the model to modify in place.
        targets: one target or a sequence of them.
        mode: ``"full"`` or ``"selective"``.
        preserve_rng_state: replay the RNG state in the recomputation; ``None`` decides
            per block as above.

    Returns:
        The qualified names of the submodules newly wrapped.

    Raises:
        ValueError: if an entry of ``targets`` selects no submodule (the message lists
            the available names and suggests the closest ones; nothing is wrapped then),
            if ``mode`` is not ``"full"``/``"selective"``, or if a matched submodule is
            already checkpointed with other settings (nothing is wrapped
            then either).
        TypeError: if ``targets`` is not a string, class or a sequence of them, or
            ``preserve_rng_state`` is not ``None`` or a bool.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> apply_gradient_checkpointing(net, "Linear", mode="selective")
        ['0', '2']
        >>> net(torch.randn(3, 4, requires_grad=True)).sum().backward()
        >>> remove_gradient_checkpointing(net)
        ['0', '2']
    """
    model = check_module("model", model)
    check_choice("mode", mode, MODES)
    if preserve_rng_state is not None:
        check_bool("preserve_rng_state", preserve_rng_state)
    chosen = list(_iter_new(model, targets))
    settings = (mode, preserve_rng_state)
    for name, _, existing in chosen:  # check every target before wrapping any
        if existing is not None and (existing.mode, existing.preserve_rng_state) != settings:
            raise ValueError(
                f"`{name}` is already checkpointed with mode={existing.mode!r}, "
                f"preserve_rng_state={existing.preserve_rng_state!r}; got mode={mode!r}, "
                f"preserve_rng_state={preserve_rng_state!r}. Call remove_gradient_checkpointing first."
            )
    wrapped = []
    for name, module, existing in chosen:
        if existing is None:
            CheckpointedForward(module, mode, preserve_rng_state).install()
            wrapped.append(name)
    return wrapped


def remove_gradient_checkpointing(model: nn.Module) -> list[str]:
    """Undo [`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing] on every submodule of ``model``.

    Args:
        model: a model modified by [`apply_gradient_checkpointing`][lightning_tricks.functional.apply_gradient_checkpointing].

    Returns:
        The qualified names of the submodules restored.

    Raises:
        TypeError: ``model`` is not a module.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> _ = apply_gradient_checkpointing(net, "0")
        >>> remove_gradient_checkpointing(net)
        ['0']
        >>> "forward" in net[0].__dict__
        False
    """
    return unwrap(check_module("model", model), CheckpointedForward)
