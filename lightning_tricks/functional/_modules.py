"""One rule for naming submodules, shared by every trick that takes module names.

A name is a qualified name from ``named_modules()`` (``"backbone.blocks.0"``) or a glob
over those names, matched one dotted segment at a time: ``*``, ``?`` and ``[...]`` stay
within a segment, ``**`` spans any number of segments. So ``"backbone.*"`` means the
direct children of ``backbone``, ``"backbone.**"`` all of its descendants and
``"**.norm1"`` every ``norm1`` at any depth.

Besides names, an entry may be a class name (``"BatchNorm2d"``, or the dotted
``"module.QualName"``) or a class, which selects every submodule of that type. A lone
string is one entry, never a sequence of characters.

Parameters are named by the same rule (`resolve_parameters`): an entry selects the
parameters whose qualified name it matches (``"**.bias"``, ``"backbone.embed.pos"``) and
every parameter of the submodules it selects (``"head"``, ``"backbone.*"``).

A name that matches nothing fails with one message form that names the argument, lists
the available submodules and suggests near matches.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from torch import nn

from lightning_tricks.functional._checks import check_names

__all__ = [
    "ModuleSpec",
    "glob_match",
    "is_glob",
    "match_modules",
    "name_entries",
    "resolve_modules",
    "resolve_parameters",
    "unknown_module_error",
    "unknown_name_error",
]

ModuleSpec = str | type | Sequence[str | type]
"""What an argument that names submodules or parameters accepts: one entry or a sequence."""

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


def unknown_module_error(arg: str, value: object, model: nn.Module, limit: int = 40) -> ValueError:
    """The error for a name that selects no submodule of ``model``.

    Lists the submodules up to two levels deep and, when there are any, the closest
    names at every depth.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> print(unknown_module_error("layers", "00", net))
        `layers` names no submodule '00'; available: 0, 1; did you mean '0'?
    """
    every = [n for n, _ in model.named_modules() if n]
    if isinstance(value, type):
        types = sorted({type(m).__name__ for m in model.modules()})
        return ValueError(
            f"`{arg}` names no submodule {value.__name__!r} (no submodule is an instance of it); "
            f"module types in the model: {', '.join(types)}"
        )
    # class names of submodules only: suggesting the model's own class would repeat the name
    types = sorted({type(m).__name__ for n, m in model.named_modules() if n})
    error = unknown_name_error(arg, value, every, "submodule", limit=limit, extra=types)
    if value == type(model).__name__:
        return ValueError(
            f"{error}; {value!r} is the class of the model itself, and `{arg}` selects its submodules"
        )
    return error


def unknown_name_error(
    arg: str,
    value: object,
    names: Sequence[str],
    what: str,
    *,
    limit: int = 40,
    extra: Sequence[str] = (),
) -> ValueError:
    """The one error form for a name that selects nothing among ``names``.

    Lists the names up to two levels deep and suggests the closest ones (also among
    ``extra``, e.g. class names).

    Example:
        >>> print(unknown_name_error("exclude", "hed.bias", ["head.weight", "head.bias"], "parameter"))
        `exclude` names no parameter 'hed.bias'; available: head.weight, head.bias; did you mean 'head.bias', 'head.weight'?
    """
    shallow = [n for n in names if n.count(".") < 2]
    shown = ", ".join(shallow[:limit]) or f"(no {what}s)"
    if len(shallow) > limit:
        shown += f", ... ({len(shallow) - limit} more)"
    close = difflib.get_close_matches(str(value), [*names, *extra], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"`{arg}` names no {what} {value!r}; available: {shown}{hint}")


def name_entries(arg: str, spec: object, *, allow_empty: bool = False) -> tuple[str | type, ...]:
    """Normalise a `ModuleSpec`: a lone string or class is one entry.

    Raises:
        TypeError: an entry that is neither a non-empty string nor a class.
        ValueError: an empty sequence (unless ``allow_empty``).

    Example:
        >>> name_entries("layers", "12"), name_entries("layers", ["a.*", nn.Linear])
        (('12',), ('a.*', <class 'torch.nn.modules.linear.Linear'>))
    """
    return check_names(arg, spec, allow_empty=allow_empty, allow_classes=True)


def _class_matches(module: nn.Module, entry: str | type) -> bool:
    cls = type(module)
    if isinstance(entry, type):
        return isinstance(module, entry)
    return entry in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")


def _entry_modules(model: nn.Module, entry: str | type) -> list[str]:
    if isinstance(entry, str):
        hits = match_modules(model, entry)
        if hits:
            return hits
    return [n for n, m in model.named_modules() if n and _class_matches(m, entry)]


def resolve_modules(
    model: nn.Module, spec: ModuleSpec, arg: str, *, outermost: bool = False, allow_empty: bool = False
) -> dict[str, nn.Module]:
    """The one resolver for arguments that name submodules.

    Each entry is a qualified name, a segment-wise glob (see the module docstring), a
    class name or a class; every entry must select at least one submodule.

    Args:
        model: the root module.
        spec: one entry or a sequence of entries.
        arg: the argument's name, for error messages.
        outermost: drop submodules nested inside another selected one (so nothing is
            wrapped twice).
        allow_empty: accept an empty sequence (returns ``{}``).

    Returns:
        The selected submodules by qualified name, in model order.

    Raises:
        TypeError: ``spec`` is not a name, class or sequence of them.
        ValueError: an entry selects nothing (one message form, with suggestions).

    Example:
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
        >>> list(resolve_modules(net, "0.*", "layers")), list(resolve_modules(net, "Linear", "layers"))
        (['0.0', '0.1'], ['0.0', '1'])
        >>> list(resolve_modules(net, ["0", nn.Linear], "layers", outermost=True))
        ['0', '1']
    """
    entries = name_entries(arg, spec, allow_empty=allow_empty)
    chosen: set[str] = set()
    for entry in entries:
        hits = _entry_modules(model, entry)
        if not hits:
            raise unknown_module_error(arg, entry, model)
        chosen.update(hits)
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name not in chosen:
            continue
        if outermost and any(name.startswith(prefix + ".") for prefix in out):
            continue
        out[name] = module
    return out


def resolve_parameters(
    model: nn.Module, spec: ModuleSpec, arg: str, *, allow_empty: bool = False
) -> dict[str, nn.Parameter]:
    """The one resolver for arguments that name parameters.

    An entry selects the parameters whose qualified name it matches, by the same
    segment-wise rule as module names (``"**.bias"``, ``"backbone.embed.pos"``), and
    every parameter of the submodules it selects as a module entry (``"head"``,
    ``"backbone.*"``, ``"LayerNorm"``). Shared (tied) parameters appear once, under
    their first name.

    Raises:
        TypeError: ``spec`` is not a name, class or sequence of them.
        ValueError: an entry selects no parameter.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        >>> list(resolve_parameters(net, "**.bias", "exclude"))
        ['0.bias', '1.bias']
        >>> list(resolve_parameters(net, ["LayerNorm", "0.weight"], "exclude"))
        ['0.weight', '1.weight', '1.bias']
    """
    entries = name_entries(arg, spec, allow_empty=allow_empty)
    named = dict(model.named_parameters())
    chosen: set[str] = set()
    for entry in entries:
        hits = [n for n in named if isinstance(entry, str) and glob_match(n, entry)]
        try:
            modules = _entry_modules(model, entry)
        except AttributeError:
            modules = []
        for prefix in modules:
            hits += [n for n in named if n.startswith(prefix + ".")]
        if not hits:
            every = [n for n, _ in model.named_modules() if n] + list(named)
            raise unknown_name_error(arg, entry, every, "parameter or submodule")
        chosen.update(hits)
    return {n: p for n, p in named.items() if n in chosen}
