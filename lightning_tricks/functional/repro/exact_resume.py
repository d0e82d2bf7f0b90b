"""Capture and restore every random number generator a training loop draws from.

The functional pair of [`ExactResume`][lightning_tricks.ExactResume]:
[`capture_rng_state`][lightning_tricks.functional.capture_rng_state] / [`restore_rng_state`][lightning_tricks.functional.restore_rng_state], and [`gather_rng_states`][lightning_tricks.functional.gather_rng_states] for
the states of every rank of a ``torch.distributed`` world.

A state holds the generators of torch (CPU, and every visible CUDA device), numpy's
global generator and Python's `random`, as tensors, ints, floats and lists only, so
that a checkpoint holding it loads with ``torch.load(..., weights_only=True)``: no numpy
object is pickled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch

from lightning_tricks.functional._checks import check_bool

__all__ = ["capture_rng_state", "gather_rng_states", "restore_rng_state"]

_np: Any
try:  # numpy is a dependency of every real setup, but capturing must not fail without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

_KEYS = ("torch", "cuda", "numpy", "python")


def capture_rng_state(cuda: bool = True) -> dict[str, Any]:
    """The current state of torch's CPU and CUDA generators, numpy's and Python's.

    Args:
        cuda: include the generator of every visible CUDA device (when CUDA is available).

    Returns:
        ``{"torch": uint8 tensor, "cuda": [uint8 tensor per device], "numpy": {...} | None,
        "python": {...}}``: tensors and plain Python values only (loadable with
        ``weights_only=True``).

    Example:
        >>> import torch
        >>> state = capture_rng_state()
        >>> a = torch.rand(3)
        >>> restore_rng_state(state)
        >>> torch.equal(torch.rand(3), a)
        True
    """
    cuda = check_bool("cuda", cuda)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda and torch.cuda.is_available() else [],
        "numpy": None,
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if _np is not None:
        kind, keys, pos, has_gauss, cached = _np.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(_np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every generator to a state from [`capture_rng_state`][lightning_tricks.functional.capture_rng_state].

    Generators missing from ``state`` (numpy when it was not installed, CUDA devices
    that are not visible now) are left as they are.

    Args:
        state: a state from [`capture_rng_state`][lightning_tricks.functional.capture_rng_state].

    Raises:
        TypeError: ``state`` is not a dict with a ``"torch"`` tensor.
        ValueError: a part of ``state`` is damaged; every part is checked before any
            generator is set, so nothing changes.

    Example:
        >>> import random
        >>> state = capture_rng_state()
        >>> a = random.random()
        >>> restore_rng_state(state)
        >>> random.random() == a
        True
    """
    if not isinstance(state, Mapping) or not isinstance(state.get("torch"), torch.Tensor):
        raise TypeError(
            f"`state` must be a dict from capture_rng_state() with keys {list(_KEYS)}; "
            f"got {type(state).__name__}"
            + (f" with keys {sorted(map(str, state))}" if isinstance(state, Mapping) else "")
        )
    # Check every part on scratch generators first, so that a bad state changes nothing.
    try:
        torch_state = state["torch"].detach().cpu()
        torch.Generator().set_state(torch_state)
        cuda_states = [t.detach().cpu() for t in (state.get("cuda") or [])]
        for cuda_state in cuda_states:
            if not isinstance(cuda_state, torch.Tensor) or cuda_state.dtype != torch.uint8:
                raise TypeError("a CUDA generator state must be a uint8 tensor")
        py = state.get("python")
        py_state = None
        if py is not None:
            internal = tuple(int(v) for v in py["state"].tolist())
            py_state = (int(py["version"]), internal, py["gauss_next"])
            random.Random().setstate(py_state)
        np_state = state.get("numpy")
        np_tuple = None
        if np_state is not None and _np is not None:
            keys = np_state["keys"].numpy().astype(_np.uint32)
            np_tuple = (
                np_state["kind"],
                keys,
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
            _np.random.RandomState().set_state(np_tuple)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, IndexError) as err:
        raise ValueError(f"`state` is not a state from capture_rng_state(): {err!r}") from None
    torch.set_rng_state(torch_state)
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if py_state is not None:
        random.setstate(py_state)
    if np_tuple is not None:
        _np.random.set_state(np_tuple)


def gather_rng_states(cuda: bool = True) -> list[dict[str, Any]]:
    """Every rank's [`capture_rng_state`][lightning_tricks.functional.capture_rng_state], in rank order (a collective call).

    Without an initialized ``torch.distributed`` process group, the one-element list of
    this process's state.

    Args:
        cuda: include CUDA generators (see [`capture_rng_state`][lightning_tricks.functional.capture_rng_state]).

    Returns:
        ``[state of rank 0, state of rank 1, ...]`` on every rank.

    Example:
        >>> states = gather_rng_states()
        >>> len(states)
        1
    """
    state = capture_rng_state(cuda=check_bool("cuda", cuda))
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return [_to_cpu(s) for s in gathered]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
