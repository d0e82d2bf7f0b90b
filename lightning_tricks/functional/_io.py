"""Atomic file writing: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``.

    Readers never see a half-written file: the data goes to a temporary file in the
    destination folder (same file system), which is then renamed with ``os.replace``.
    On error the temporary file is removed and ``path`` is left untouched; a ``path``
    that is a folder raises ``IsADirectoryError`` before anything is written.

    Example:
        >>> import tempfile, pathlib
        >>> d = tempfile.mkdtemp()
        >>> p = atomic_write(pathlib.Path(d) / "a.txt", lambda t: pathlib.Path(t).write_text("hi"))
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the file {str(path)!r}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "x.bin", b"ab").read_bytes()
        b'ab'
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "x.txt", "ok").read_text()
        'ok'
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
