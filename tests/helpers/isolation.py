"""Run code as a user of the installed package would: without this checkout's other files.

The docs and docstring examples must run with only ``lightning_tricks`` installed, but the
test-suite runs them from the checkout, where ``tests``, ``examples`` and ``benchmarks``
are importable too (the repository root is on ``sys.path``). Inside
:func:`installed_package_only`, they are not.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


@functools.cache
def _installed_places() -> tuple[str, ...]:
    """Where installed libraries live: a virtualenv inside the checkout (``.venv``) is not
    the checkout's own code."""
    import site
    import sysconfig

    places = {sys.prefix, sys.exec_prefix, *sysconfig.get_paths().values(), *site.getsitepackages()}
    return tuple(os.path.realpath(p) for p in places if p)


def _from_checkout(module: ModuleType | None, root: str, package: str) -> bool:
    """Whether a loaded module is one of the checkout's files other than the package's
    (installed libraries excluded, even from a virtualenv inside the checkout)."""
    if module is None:
        return False
    try:
        places = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", None) or [])]
    except Exception:  # exotic modules (torch.ops) may raise on attribute access
        return False
    places = [p if os.path.isabs(p) else os.path.abspath(p) for p in places if isinstance(p, str) and p]
    installed = _installed_places()
    return any(
        _under(p, root)
        and not _under(p, package)
        and not any(_under(os.path.realpath(p), i) for i in installed)
        for p in places
    )


@contextlib.contextmanager
def installed_package_only(root: Path = ROOT, package: str = "lightning_tricks") -> Iterator[None]:
    """Within the block, the checkout's files other than ``package`` cannot be imported.

    * Every loaded module that lives in the checkout outside ``root/package`` (``tests.*``,
      ``examples.*``, ...) is taken out of ``sys.modules`` and its top-level name, with
      ``tests`` and ``examples``, is set to ``None`` there, so ``import tests.helpers`` raises
      ``ImportError`` (``ModuleNotFoundError``);
    * the checkout's root is taken off ``sys.path``.

    On exit both are restored exactly, so the rest of the test-suite is unaffected.
    """
    root_s, package_s = str(root.resolve()), str((root / package).resolve())
    evicted = {name: mod for name, mod in list(sys.modules.items()) if _from_checkout(mod, root_s, package_s)}
    blocked = {name.partition(".")[0] for name in evicted} | {
        p.name for p in root.iterdir() if (p / "__init__.py").is_file() and p.name != package
    }
    saved = {name: sys.modules[name] for name in blocked if name in sys.modules}
    saved.update(evicted)
    saved_path = list(sys.path)
    for name in evicted:
        del sys.modules[name]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root_s]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n.partition(".")[0] in blocked]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path[:] = saved_path
