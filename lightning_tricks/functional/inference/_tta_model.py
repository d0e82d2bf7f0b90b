"""What ``tta_predict`` needs from a model: the tensor to merge, and the modules to put in eval."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._model_errors import model_errors

__all__ = ["OutputSelector", "modules_of", "select_output"]

# ----------------------------------------------------------------------------- model outputs

OutputSelector = str | int | Callable[[Any], torch.Tensor] | None


def _check_output(output: Any) -> None:
    if output is None or (callable(output) and not isinstance(output, type)):
        return
    if isinstance(output, str | int) and not isinstance(output, bool):
        return
    raise TypeError(
        f"`output` must be None, a key (str), an index (int) or a callable (not a class) picking the tensor from the "
        f"model's output; got {output!r} of type {type(output).__name__}"
    )


def select_output(out: Any, output: OutputSelector = None) -> torch.Tensor:
    """The tensor to merge in a model's output (tensor, ``ModelOutput``/dict, tuple/list).

    ``output=None`` takes the tensor itself, the ``"logits"`` entry of a ``ModelOutput`` or
    dict, or element 0 of a tuple/list; a string picks a key (or attribute), an int an
    element, a callable is applied to the output.
    """
    if callable(output) and not isinstance(output, str | int):
        with model_errors(f"the `output` callable on the model's {type(out).__name__}"):
            picked = output(out)
        how = "the `output` callable"
    elif isinstance(out, torch.Tensor) and output is None:
        return out
    elif isinstance(out, Mapping) and not isinstance(output, int):
        key = "logits" if output is None else output
        if key not in out:
            raise ValueError(
                f"`output`={output!r}: the model's {type(out).__name__} has no {key!r} entry; available: "
                f"{', '.join(map(str, out.keys()))}. Pass `output=<key>` or a callable"
            )
        picked, how = out[key], f"key {key!r}"
    elif isinstance(out, tuple | list) or (isinstance(out, Mapping) and isinstance(output, int)):
        idx = 0 if output is None else output
        items = tuple(out.values()) if isinstance(out, Mapping) else out
        if not isinstance(idx, int) or not -len(items) <= idx < len(items):
            raise ValueError(
                f"`output`={output!r} does not index the model's {type(out).__name__} of length {len(items)}"
            )
        picked, how = items[idx], f"element {idx}"
    elif isinstance(output, str) and hasattr(out, output):
        picked, how = getattr(out, output), f"attribute {output!r}"
    else:
        raise TypeError(
            f"tta_predict cannot pick a tensor from a model output of type {type(out).__name__} with "
            f"`output`={output!r}; pass `output=` a key, an index or a callable returning the tensor to merge"
        )
    if not isinstance(picked, torch.Tensor):
        raise TypeError(
            f"{how} of the model's {type(out).__name__} is a {type(picked).__name__}, not a tensor; pass "
            "`output=` a key, an index or a callable returning the tensor to merge"
        )
    return picked


# ----------------------------------------------------------------------------- eval mode


def modules_of(model: Any, _depth: int = 0) -> list[nn.Module]:
    """The modules behind ``model``: itself, the owner of a bound method, or the modules
    a function or ``functools.partial`` refers to (closure cells and globals it names)."""
    if isinstance(model, nn.Module):
        return [model]
    owner = getattr(model, "__self__", None)
    if isinstance(owner, nn.Module):
        return [owner]
    if _depth > 2:
        return []
    found: list[Any] = []
    if isinstance(model, functools.partial):
        found += modules_of(model.func, _depth + 1)
        found += [a for a in (*model.args, *model.keywords.values()) if isinstance(a, nn.Module)]
    code = getattr(model, "__code__", None)
    if code is not None:
        cells = [c.cell_contents for c in (getattr(model, "__closure__", None) or ()) if _filled(c)]
        names = getattr(model, "__globals__", {})
        cells += [names[n] for n in code.co_names if n in names]
        for obj in cells:
            if isinstance(obj, nn.Module):
                found.append(obj)
            elif callable(obj) and getattr(obj, "__code__", None) is not None and obj is not model:
                found += modules_of(obj, _depth + 1)
    unique: dict[int, nn.Module] = {}
    for m in found:
        unique.setdefault(id(m), m)
    return list(unique.values())


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _eval_mode(roots: list[nn.Module]):
    """Every submodule in eval mode; only the flags that were ``True`` are switched and restored."""
    switched = [m for root in roots for m in root.modules() if m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True
