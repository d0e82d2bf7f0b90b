"""The side effects of a recomputed forward, for `gradient_checkpointing`.

A checkpointed block runs its forward twice: once in the forward pass and once in
backward. Two things must not differ from the plain model:

* norm layers with running statistics (``BatchNorm``, tracked ``InstanceNorm``) must
  update them once per step: `FrozenRunningStats` gives the recomputation scratch
  copies of the buffers;
* random draws (dropout) must be the same in both runs, which costs an RNG-state
  save/replay: `random_sources` tells which blocks can draw, `rng_state`
  lets the first call of a block that looks deterministic check that it drew nothing.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import torch
from torch import nn

__all__: list[str] = []  # private helpers of gradient_checkpointing

# --------------------------------------------------------------------------- norm statistics

_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def tracks_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` updates running statistics in training (BatchNorm, tracked InstanceNorm)."""
    return getattr(module, "track_running_stats", False) is True and isinstance(
        getattr(module, "running_mean", None), torch.Tensor
    )


class FrozenRunningStats:
    """While active, the norm layers in training mode update scratch copies of their running
    statistics, so that a recomputed forward leaves the real buffers as the original forward
    left them (BatchNorm updates its statistics once per step, as in the plain model)."""

    def __init__(self, norms: list[nn.Module]) -> None:
        self.norms = norms
        self._stash: list[list[tuple[nn.Module, str, torch.Tensor]]] = []

    def __enter__(self) -> None:
        swapped = []
        for m in self.norms:
            if not m.training:
                continue
            for name in _STAT_BUFFERS:
                buf = m._buffers.get(name)
                if buf is not None:
                    swapped.append((m, name, buf))
                    m._buffers[name] = buf.clone()
        self._stash.append(swapped)

    def __exit__(self, *exc: Any) -> None:
        for m, name, buf in self._stash.pop():
            m._buffers[name] = buf


class Both:
    """Two context managers entered in order, exited in reverse (the recompute context)."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __enter__(self) -> None:
        self.first.__enter__()
        try:
            self.second.__enter__()
        except BaseException:
            self.first.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self.second.__exit__(*exc)
        finally:
            self.first.__exit__(*exc)


# --------------------------------------------------------------------------- randomness

_RANDOM_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_RANDOM_NAME = re.compile(r"drop|stochastic|noise", re.IGNORECASE)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def random_sources(block: nn.Module) -> tuple[bool, list[tuple[Any, str]]]:
    """How ``block`` can draw random numbers: ``(always, [(obj, attr), ...])``.

    ``always``: a module that draws whenever it trains (``RReLU``, a dropout-like module
    without a rate attribute). Otherwise the block draws random numbers in training when
    any ``getattr(obj, attr) > 0``: the ``p`` of dropout modules and every numeric
    attribute whose name contains "drop" (``attention_dropout``, ``drop_prob``,
    ``config.attention_probs_dropout_prob``...), read at call time so that rates changed
    during training count.
    """
    always = False
    sources: list[tuple[Any, str]] = []
    for m in block.modules():
        if isinstance(m, nn.RReLU):
            always = True
        elif isinstance(m, _RANDOM_TYPES) or _RANDOM_NAME.search(type(m).__name__):
            rate = next((a for a in ("p", "drop_prob", "drop_rate") if _is_number(getattr(m, a, None))), None)
            if rate is None:
                always = True
            else:
                sources.append((m, rate))
        for owner in (m, getattr(m, "config", None)):
            attrs = getattr(owner, "__dict__", {}) if owner is not None else {}
            sources += [(owner, k) for k, v in attrs.items() if "drop" in k.lower() and _is_number(v)]
    unique = {(id(obj), attr): (obj, attr) for obj, attr in sources}
    return always, list(unique.values())


def rng_state(device_type: str) -> list[torch.Tensor] | None:
    """The RNG states a block on ``device_type`` can draw from, or ``None`` if unknown."""
    states = [torch.get_rng_state()]
    if device_type == "cuda":
        if torch.cuda.is_initialized():
            states += torch.cuda.get_rng_state_all()
    elif device_type != "cpu":
        return None
    return states


def first_device_type(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The device type of the first tensor argument (``"cpu"`` if there is none)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device.type
    return "cpu"
