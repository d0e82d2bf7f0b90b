"""Argument validation that produces errors naming the argument, the value and what is allowed.

Every public constructor and function validates its input with these helpers, so that
bad input fails early with a message such as
``"`clip_factor` must be a number > 0; got -1.0"``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, Literal, cast, get_args

import torch
from torch import nn

__all__ = [
    "ON_ERROR",
    "OnError",
    "check_bool",
    "check_choice",
    "check_device",
    "check_int",
    "check_module",
    "check_names",
    "check_number",
    "check_optimizer",
    "check_optional_int",
    "check_norm_type",
    "check_param_group",
    "check_param_groups",
    "check_path",
    "check_same_length",
    "check_str",
    "check_str_sequence",
    "check_on_error",
    "check_optional_path",
    "check_tensor",
    "check_tensors",
    "describe",
    "report_problem",
]

OnError = Literal["warn", "raise", "ignore"]
"""What a guard or check does when it finds a problem: warn, raise, or only record it."""
ON_ERROR: tuple[str, ...] = get_args(OnError)


def _fmt_allowed(allowed: Iterable[Any]) -> str:
    return ", ".join(repr(a) for a in allowed)


def describe(value: Any, limit: int = 80) -> str:
    """``value`` as error messages show it: a short ``repr`` and its type; a tensor by shape
    and dtype (never its data, which may be huge or on another device).

    Example:
        >>> describe(3.5), describe(torch.zeros(2, 3))
        ('3.5 of type float', 'a tensor of shape (2, 3) and dtype torch.float32')
    """
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} of type {type(value).__name__}"


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a bool (True or False); got {value!r} of type {type(value).__name__}"
        )
    return value


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` listing them."""
    try:
        ok = value in allowed
    except TypeError:
        ok = False
    if not ok or (isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed)):
        raise ValueError(f"`{name}` must be one of {_fmt_allowed(allowed)}; got {value!r}")
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as ``int`` if it is an integer within bounds, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an int; got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be an int <= {maximum}; got {value!r}")
    return value


def check_optional_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    """Like `check_int` but also accepts ``None``."""
    return None if value is None else check_int(name, value, minimum=minimum, maximum=maximum)


def _to_float(name: str, value: Real) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"`{name}` must be a finite number; got {value!r}, too large for a float") from None


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """Return ``value`` as ``float`` if it is a finite real number within bounds, else raise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number; got {value!r} of type {type(value).__name__}")
    value = _to_float(name, value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        op = ">" if exclusive_minimum else ">="
        raise ValueError(f"`{name}` must be a number {op} {minimum}; got {value!r}")
    if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
        op = "<" if exclusive_maximum else "<="
        raise ValueError(f"`{name}` must be a number {op} {maximum}; got {value!r}")
    return value


def check_str(name: str, value: Any, *, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a (non-empty) string, else raise naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string; got {value!r} of type {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"`{name}` must be a non-empty string; got {value!r}")
    return value


def check_names(
    name: str, value: Any, *, allow_empty: bool = False, allow_classes: bool = False
) -> tuple[Any, ...]:
    """Normalise an argument that names things: a lone string is one name (never a sequence
    of characters); otherwise a sequence (list, tuple) of non-empty strings. With
    ``allow_classes``, classes are entries too (``nn.Linear`` selects every ``Linear``).

    Raises:
        TypeError: ``value`` is not a string or a sequence of them, or an entry is not a
            non-empty string (or class).
        ValueError: an empty sequence, unless ``allow_empty``.

    Example:
        >>> check_names("layers", "12"), check_names("layers", ["a", "b.*"])
        (('12',), ('a', 'b.*'))
        >>> check_names("layers", 12)
        Traceback (most recent call last):
        ...
        TypeError: `layers` must be a name or a sequence of non-empty names; got 12 of type int
    """
    what = (
        "a name, a class, or a sequence of them"
        if allow_classes
        else "a name or a sequence of non-empty names"
    )
    if isinstance(value, str) or (allow_classes and isinstance(value, type)):
        entries: tuple[Any, ...] = (value,)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        entries = tuple(value)
    else:
        raise TypeError(f"`{name}` must be {what}; got {describe(value)}")
    for entry in entries:
        if not ((isinstance(entry, str) and entry) or (allow_classes and isinstance(entry, type))):
            kinds = "non-empty strings or classes" if allow_classes else "non-empty strings"
            raise TypeError(f"`{name}` entries must be {kinds}; got {describe(entry)} in {describe(value)}")
    if not entries and not allow_empty:
        raise ValueError(f"`{name}` must name at least one entry; got {value!r}")
    return entries


def check_str_sequence(name: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    """Accept one string or a sequence of non-empty strings; return a tuple of strings
    (`check_names` without classes).

    Example:
        >>> check_str_sequence("views", "hflip")
        ('hflip',)
    """
    return check_names(name, value, allow_empty=allow_empty)


def check_same_length(*named: tuple[str, Any]) -> int:
    """Check that sequences that go together have the same length; return it.

    Each argument is a ``(name, value)`` pair; the values must be sized (``len`` works).

    Example:
        >>> check_same_length(("names", ["a", "b"]), ("values", [1.0, 2.0]))
        2
        >>> check_same_length(("names", ["a"]), ("values", [1.0, 2.0]))
        Traceback (most recent call last):
        ...
        ValueError: `names` and `values` must have the same length; got 1 and 2
    """
    lengths = []
    for name, value in named:
        try:
            lengths.append(len(value))
        except TypeError:
            raise TypeError(f"`{name}` must be a sequence (with a length); got {describe(value)}") from None
    if len(set(lengths)) > 1:
        names = " and ".join(f"`{n}`" for n, _ in named)
        raise ValueError(f"{names} must have the same length; got {' and '.join(map(str, lengths))}")
    return lengths[0] if lengths else 0


def check_module(name: str, value: Any) -> nn.Module:
    """Return ``value`` if it is an ``nn.Module``, else raise ``TypeError`` naming ``name``.

    Example:
        >>> check_module("model", nn.Linear(2, 2))
        Linear(in_features=2, out_features=2, bias=True)
        >>> check_module("model", None)
        Traceback (most recent call last):
        ...
        TypeError: `model` must be a torch.nn.Module; got None of type NoneType
    """
    if not isinstance(value, nn.Module):
        raise TypeError(f"`{name}` must be a torch.nn.Module; got {describe(value)}")
    return value


_DTYPE_KINDS = {
    "float": (torch.Tensor.is_floating_point, "a floating-point"),
    "integer": (
        lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        "an integer",
    ),
}


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: str | torch.dtype | tuple[torch.dtype, ...] | None = None,
    nonempty: bool = False,
    numel: int | None = None,
    finite: bool = False,
) -> torch.Tensor:
    """Return ``value`` if it is a tensor of the required shape and type, else raise naming ``name``.

    Args:
        name: the argument's name, for the message.
        value: what was passed.
        ndim: the allowed number(s) of dimensions.
        dtype: ``"float"`` (any floating-point dtype), ``"integer"`` (any integer dtype, not
            bool), a dtype or a tuple of dtypes.
        nonempty: refuse a tensor with no elements.
        numel: the required number of elements (``1`` for a scalar of any shape).
        finite: refuse NaN or infinite values. This reads the values (a device sync on
            GPU): ask for it where the call reads them anyway.

    Raises:
        TypeError: not a tensor, or the wrong dtype.
        ValueError: the wrong number of dimensions, empty, or not finite.

    Example:
        >>> check_tensor("x", torch.zeros(2, 3), ndim=(2, 3), dtype="float").shape
        torch.Size([2, 3])
        >>> check_tensor("x", torch.zeros(2), ndim=4)
        Traceback (most recent call last):
        ...
        ValueError: `x` must be a tensor with 4 dimensions; got a tensor of shape (2,) and dtype torch.float32
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {describe(value)}")
    if dtype is not None:
        if isinstance(dtype, str):
            test, label = _DTYPE_KINDS[dtype]
            if not test(value):
                raise TypeError(f"`{name}` must be {label} tensor; got {describe(value)}")
        else:
            dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
            if value.dtype not in dtypes:
                allowed = ", ".join(str(d) for d in dtypes)
                raise TypeError(f"`{name}` must be a tensor of dtype {allowed}; got {describe(value)}")
    if ndim is not None:
        dims = ndim if isinstance(ndim, tuple) else (ndim,)
        if value.ndim not in dims:
            allowed = " or ".join(str(d) for d in dims)
            raise ValueError(f"`{name}` must be a tensor with {allowed} dimensions; got {describe(value)}")
    if nonempty and value.numel() == 0:
        raise ValueError(f"`{name}` must be a non-empty tensor; got {describe(value)}")
    if numel is not None and value.numel() != numel:
        what = "one element" if numel == 1 else f"{numel} elements"
        raise ValueError(f"`{name}` must be a tensor with {what}; got {describe(value)}")
    if finite and (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` must hold only finite values (no NaN or inf); got {describe(value)}")
    return value


def check_optimizer(name: str, value: Any) -> torch.optim.Optimizer:
    """Return ``value`` if it is a ``torch.optim.Optimizer``, else raise ``TypeError``.

    Wrappers that expose the real optimizer as ``.optimizer`` (Lightning's
    ``LightningOptimizer``) are unwrapped.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        >>> check_optimizer("optimizer", opt) is opt
        True
    """
    inner = getattr(value, "optimizer", None) if not isinstance(value, torch.optim.Optimizer) else value
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"`{name}` must be a torch.optim.Optimizer; got {describe(value)}")
    return inner


_NUMERIC_GROUP_KEYS = ("lr", "weight_decay", "momentum", "eps", "dampening")


def check_param_group(name: str, value: Any, *, allow_empty_params: bool = True) -> dict[str, Any]:
    """Validate one optimizer parameter group; return a copy with ``params`` as a list.

    The group is a mapping with a ``"params"`` entry: a tensor or an iterable of tensors,
    each a floating-point (or complex) leaf tensor, which is what ``torch.optim`` can
    optimise. Numeric hyperparameters (``lr``, ``weight_decay``, ``momentum``, ``eps``,
    ``dampening``) must be finite numbers >= 0. The user's dict is not modified.

    Raises:
        TypeError: not a mapping, no ``params``, a non-tensor parameter, a non-number
            hyperparameter.
        ValueError: an empty group (unless ``allow_empty_params``), a non-leaf or
            integer tensor, a parameter listed twice, a NaN/inf/negative hyperparameter.

    Example:
        >>> w = nn.Parameter(torch.zeros(2))
        >>> len(check_param_group("group", {"params": w, "lr": 0.1})["params"])
        1
        >>> check_param_group("group", {"params": [w], "lr": float("nan")})
        Traceback (most recent call last):
        ...
        ValueError: `group['lr']` must be a finite number; got nan
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a dict with a 'params' entry; got {describe(value)}")
    if "params" not in value:
        raise TypeError(f"`{name}` must have a 'params' entry; got keys {sorted(map(str, value))}")
    params = value["params"]
    if isinstance(params, torch.Tensor):
        params = [params]
    elif isinstance(params, str | bytes | Mapping | nn.Module) or not isinstance(params, Iterable):
        raise TypeError(
            f"`{name}['params']` must be a tensor or an iterable of tensors; got {describe(params)}"
        )
    params = list(params)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"`{name}['params']` must hold tensors; got {describe(p)}")
        if not p.is_leaf:
            raise ValueError(
                f"`{name}['params']` holds a non-leaf tensor ({describe(p)}); optimizers need leaves"
            )
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(
                f"`{name}['params']` holds {describe(p)}; optimizers need floating-point tensors"
            )
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"`{name}['params']` lists a parameter more than once")
    if not params and not allow_empty_params:
        raise ValueError(f"`{name}['params']` is empty; a group needs at least one parameter")
    for key in _NUMERIC_GROUP_KEYS:
        if key in value and not isinstance(value[key], torch.Tensor):
            check_number(f"{name}['{key}']", value[key], minimum=0.0)
    return {**value, "params": params}


def check_param_groups(name: str, value: Any, *, allow_empty_params: bool = True) -> list[dict[str, Any]]:
    """Validate a sequence of parameter groups (`check_param_group` each); return
    copies, with ``params`` as lists. A parameter may not appear in two groups.

    Example:
        >>> w = nn.Parameter(torch.zeros(2))
        >>> [len(g["params"]) for g in check_param_groups("groups", [{"params": w, "lr": 0.1}])]
        [1]
        >>> check_param_groups("groups", [{"params": [w], "lr": -1}])
        Traceback (most recent call last):
        ...
        ValueError: `groups[0]['lr']` must be a number >= 0.0; got -1.0
    """
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TypeError(f"`{name}` must be a sequence of parameter-group dicts; got {describe(value)}")
    groups = [
        check_param_group(f"{name}[{i}]", g, allow_empty_params=allow_empty_params)
        for i, g in enumerate(value)
    ]
    ids = [id(p) for g in groups for p in g["params"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"`{name}` lists a parameter in more than one group")
    return groups


def check_tensors(name: str, value: Any) -> list[torch.Tensor]:
    """Accept a tensor or an iterable of tensors (``model.parameters()``); return a list.

    Strings, mappings, modules and optimizers are refused (pass ``model.parameters()``).

    Example:
        >>> len(check_tensors("parameters", nn.Linear(2, 2).parameters()))
        2
        >>> check_tensors("parameters", nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        TypeError: `parameters` must be a tensor or an iterable of tensors (e.g. model.parameters()); got Linear(in_features=2, out_features=2, bias=True) of type Linear
    """
    what = "a tensor or an iterable of tensors (e.g. model.parameters())"
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, str | bytes | Mapping | nn.Module | torch.optim.Optimizer) or not isinstance(
        value, Iterable
    ):
        raise TypeError(f"`{name}` must be {what}; got {describe(value)}")
    items = list(value)
    for item in items:
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"`{name}` must be {what}; it holds {describe(item)}")
    return items


def check_norm_type(name: str, value: Any) -> float:
    """``p`` of a p-norm: a number in [1, 32] or ``inf`` (the max norm).

    Below 1 it is no norm; above 32 the powers overflow float32 for ordinary values.

    Example:
        >>> check_norm_type("norm_type", 2), check_norm_type("norm_type", float("inf"))
        (2.0, inf)
        >>> check_norm_type("norm_type", 0)
        Traceback (most recent call last):
        ...
        ValueError: `norm_type` must be a number in [1, 32] or inf; got 0
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number in [1, 32] or inf; got {describe(value)}")
    p = _to_float(name, value)
    if p == math.inf:
        return math.inf
    if math.isnan(p) or not 1 <= p <= 32:
        raise ValueError(f"`{name}` must be a number in [1, 32] or inf; got {value!r}")
    return p


def check_device(name: str, value: Any) -> torch.device:
    """Return ``value`` as a ``torch.device`` (from a device, a string such as ``"cuda:1"`` or
    a CUDA index), else raise naming ``name``.

    Example:
        >>> check_device("device", "cpu")
        device(type='cpu')
        >>> check_device("device", "gpu")
        Traceback (most recent call last):
        ...
        ValueError: `device` must name a device ("cpu", "cuda", "cuda:1", ...); got 'gpu'
    """
    if isinstance(value, torch.device):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(
            f"`{name}` must be a torch.device, a device string or an index; got {describe(value)}"
        )
    try:
        return torch.device(value)
    except (RuntimeError, ValueError, TypeError, OverflowError):
        raise ValueError(
            f'`{name}` must name a device ("cpu", "cuda", "cuda:1", ...); got {value!r}'
        ) from None


def check_path(name: str, value: Any) -> str:
    """Return ``value`` as a string path if it is a non-empty ``str`` or ``os.PathLike``;
    refuse ``None``, file descriptors (ints) and bytes.

    Example:
        >>> check_path("path", "weights.safetensors")
        'weights.safetensors'
        >>> check_path("path", 1)
        Traceback (most recent call last):
        ...
        TypeError: `path` must be a path (str or os.PathLike); got 1 of type int
    """
    if value is None:
        raise TypeError(f"`{name}` must be a path (str or os.PathLike); got None of type NoneType")
    try:
        path = check_optional_path(name, value)
    except TypeError:
        raise TypeError(f"`{name}` must be a path (str or os.PathLike); got {describe(value)}") from None
    except ValueError:
        raise ValueError(f"`{name}` must be a non-empty path without NUL characters; got {value!r}") from None
    return cast(str, path)


def check_optional_path(name: str, value: Any) -> str | None:
    """Return ``value`` as a string path (``str`` or ``os.PathLike``), or ``None``; else raise
    ``TypeError`` naming ``name``. File descriptors (ints) are refused.

    Example:
        >>> check_optional_path("dirpath", None) is None
        True
    """
    if value is None:
        return None
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        path = os.fspath(value)
        if isinstance(path, str):
            if not path or "\x00" in path:
                raise ValueError(
                    f"`{name}` must be a non-empty path without NUL characters, or None; got {value!r}"
                )
            return path
    raise TypeError(
        f"`{name}` must be a path (str or os.PathLike) or None; got {value!r} of type {type(value).__name__}"
    )


def check_on_error(value: Any, allowed: Sequence[str] = ON_ERROR) -> str:
    """Validate the ``on_error`` argument that every guard and check takes.

    Example:
        >>> check_on_error("raise")
        'raise'
    """
    return str(check_choice("on_error", value, allowed))


def report_problem(on_error: str, message: str, error: type[Exception] = RuntimeError) -> None:
    """Act on a problem a guard or check found, as ``on_error`` says: raise ``error(message)``,
    warn with ``message``, or (``"ignore"``) do nothing.

    Example:
        >>> report_problem("ignore", "nothing happens")
    """
    if on_error == "raise":
        raise error(message)
    if on_error == "warn":
        warnings.warn(message, stacklevel=3)
