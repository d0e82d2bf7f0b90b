"""Argument validation that produces errors naming the argument, the value and what is allowed.

Every public constructor and function validates its input with these helpers, so that
bad input fails early with a message such as
``"`clip_factor` must be a number > 0; got -1.0"``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any, Literal, get_args

__all__ = [
    "ON_ERROR",
    "OnError",
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_optional_int",
    "check_str",
    "check_str_sequence",
    "check_on_error",
    "check_optional_path",
    "report_problem",
]

OnError = Literal["warn", "raise", "ignore"]
"""What a guard or check does when it finds a problem: warn, raise, or only record it."""
ON_ERROR: tuple[str, ...] = get_args(OnError)


def _fmt_allowed(allowed: Iterable[Any]) -> str:
    return ", ".join(repr(a) for a in allowed)


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


def check_optional_int(name: str, value: Any, *, minimum: int | None = None) -> int | None:
    """Like `check_int` but also accepts ``None``."""
    return None if value is None else check_int(name, value, minimum=minimum)


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
    value = float(value)
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


def check_str_sequence(name: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    """Accept one string or a sequence of non-empty strings; return a tuple of strings."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"`{name}` must be a string or a sequence of non-empty strings; got {value!r}")
    if not allow_empty and not value:
        raise ValueError(f"`{name}` must name at least one entry; got {value!r}")
    return tuple(value)


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
            if not path:
                raise ValueError(f"`{name}` must be a non-empty path or None; got {value!r}")
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
