"""One rule for naming submodules, shared by every trick that takes module names.

A name is a qualified name from ``named_modules()`` (``"backbone.blocks.0"``) or a glob
over those names, matched one dotted segment at a time: ``*``, ``?`` and ``[...]`` stay
within a segment, ``**`` spans any number of segments. So ``"backbone.*"`` means the
direct children of ``backbone``, ``"backbone.**"`` all of its descendants and
``"**.norm1"`` every ``norm1`` at any depth.

A name that matches nothing fails with one message form that names the argument, lists
the available submodules and suggests near matches.
"""

from __future__ import annotations

import difflib
import fnmatch

from torch import nn

__all__ = ["glob_match", "is_glob", "match_modules", "unknown_module_error"]

_GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` contains glob characters.

    Example:
        >>> is_glob("backbone.*"), is_glob("backbone")
        (True, False)
    """
    return bool(_GLOB_CHARS & set(pattern))


def _match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(parts[1:], pattern[1:])


def glob_match(name: str, pattern: str) -> bool:
    """Whether the qualified module ``name`` matches ``pattern`` (segment-wise glob).

    Example:
        >>> glob_match("backbone.0", "backbone.*"), glob_match("backbone.0.conv", "backbone.*")
        (True, False)
        >>> glob_match("backbone.0.conv", "backbone.**"), glob_match("a.b.norm1", "**.norm1")
        (True, True)
    """
    return _match(name.split("."), pattern.split("."))


def match_modules(model: nn.Module, pattern: str) -> list[str]:
    """Qualified names of the submodules of ``model`` that ``pattern`` selects, in model order.

    A plain name selects that submodule (if it exists); a glob selects every match.

    Example:
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
        >>> match_modules(net, "0.*"), match_modules(net, "1"), match_modules(net, "2")
        (['0.0', '0.1'], ['1'], [])
    """
    if not is_glob(pattern):
        try:
            model.get_submodule(pattern)
        except AttributeError:
            return []
        return [pattern] if pattern else []
    return [n for n, _ in model.named_modules() if n and glob_match(n, pattern)]


def unknown_module_error(arg: str, value: str, model: nn.Module, limit: int = 40) -> ValueError:
    """The error for a name that selects no submodule of ``model``.

    Lists the submodules up to two levels deep and, when there are any, the closest
    names at every depth.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> print(unknown_module_error("layers", "00", net))
        `layers` names no submodule '00'; available: 0, 1; did you mean '0'?
    """
    every = [n for n, _ in model.named_modules() if n]
    shallow = [n for n in every if n.count(".") < 2]
    shown = ", ".join(shallow[:limit]) or "(no submodules)"
    if len(shallow) > limit:
        shown += f", ... ({len(shallow) - limit} more)"
    close = difflib.get_close_matches(str(value), every, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"`{arg}` names no submodule {value!r}; available: {shown}{hint}")
