"""Gradient (activation) checkpointing of chosen submodules, in place and reversibly.

Each target's ``forward`` is replaced by a picklable wrapper that runs the original
forward under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant, RNG state
preserved), so its activations are recomputed in backward instead of stored. The module
keeps its identity and ``state_dict`` keys, so this works before DDP wraps the model,
with frozen layers, and with checkpoints saved by the plain model.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_tricks.functional.perf._targets import (
    ForwardWrapper,
    TargetSpec,
    find_wrapped,
    select_modules,
    unwrap,
)

__all__ = ["CheckpointedForward", "apply_gradient_checkpointing", "remove_gradient_checkpointing"]


class CheckpointedForward(ForwardWrapper):
    """A module's ``forward`` run under non-reentrant activation checkpointing.

    Only in training mode with grad enabled; in eval mode or under ``torch.no_grad()`` /
    ``torch.inference_mode()`` it calls the original forward directly (nothing to save).

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> CheckpointedForward(layer).install()
        >>> layer(torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.module.training and torch.is_grad_enabled()):
            return self.call_original(*args, **kwargs)
        fn = functools.partial(self.call_original, **kwargs) if kwargs else self.call_original
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True)


def apply_gradient_checkpointing(model: nn.Module, targets: TargetSpec) -> list[str]:
    """Checkpoint the activations of the submodules of ``model`` chosen by ``targets``.

    Targets are module classes, class names (``"ResidualBlock"``) or globs over qualified
    submodule names (``"backbone.blocks.*"``); only the outermost match of a nested chain
    is wrapped. Applying twice wraps nothing twice. Gradients are those of the plain model
    (dropout draws the same mask in the recomputation). Call it before wrapping the model
    in DDP/FSDP.

    Args:
        model: the model to modify in place.
        targets: one target or a sequence of them.

    Returns:
        The qualified names of the submodules newly wrapped.

    Raises:
        ValueError: if ``targets`` matches no submodule (the message lists what exists).
        TypeError: if ``targets`` is not a string, class or a sequence of them.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> apply_gradient_checkpointing(net, "Linear")
        ['0', '2']
        >>> net(torch.randn(3, 4, requires_grad=True)).sum().backward()
        >>> remove_gradient_checkpointing(net)
        ['0', '2']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    done = {id(w.module) for _, w in find_wrapped(model, CheckpointedForward)}
    wrapped = []
    for name, module in select_modules(model, targets):
        if id(module) in done:
            continue
        CheckpointedForward(module).install()
        wrapped.append(name)
    return wrapped


def remove_gradient_checkpointing(model: nn.Module) -> list[str]:
    """Undo :func:`apply_gradient_checkpointing` on every submodule of ``model``.

    Args:
        model: a model modified by :func:`apply_gradient_checkpointing`.

    Returns:
        The qualified names of the submodules restored.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> _ = apply_gradient_checkpointing(net, "0")
        >>> remove_gradient_checkpointing(net)
        ['0']
        >>> "forward" in net[0].__dict__
        False
    """
    return unwrap(model, CheckpointedForward)
