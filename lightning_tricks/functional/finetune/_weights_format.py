"""Recognise what a weights file is before reading it, and explain why one cannot be read.

Private helpers of `lightning_tricks.functional.finetune.weights_io`. Nothing here
unpickles anything: pickles are inspected with `pickletools`, which only parses
opcodes.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
import pickletools
import re
import sys
import zipfile
from pathlib import Path

__all__ = ["pickle_globals", "refusal", "sniff", "unreadable"]

# ``torch.save(..., _use_new_zipfile_serialization=False)`` starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_EXPECTED = "expected a .safetensors file or a PyTorch state dict / checkpoint"
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)
# Globals a plain weights pickle may reference (torch's tensor rebuilders, ordered dicts).
_PLAIN_GLOBAL = re.compile(r"^(torch(\.[\w.]+)?|collections\.OrderedDict|_codecs\.encode)$")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")


def sniff(path: Path) -> str:
    """The kind of file at ``path``, from its first bytes (and suffix where the bytes are ambiguous).

    One of ``"empty"``, ``"safetensors"``, ``"safetensors?"`` (the suffix says so, the
    content does not), ``"npy"``, ``"zip"``, ``"torch_legacy"``, ``"pickle"``,
    ``"json"``, ``"text"``, ``"unknown"``.
    """
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch_legacy"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 2**40:
        return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 4096-byte boundary is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None and "\x00" not in text:
        if text.lstrip()[:1] in ("{", "[") and _is_json(path, size):
            return "json"
        return "text"
    if path.suffix.lower() == ".safetensors":
        return "safetensors?"
    return "unknown"


def _is_json(path: Path, size: int) -> bool:
    if size > 64 * 2**20:
        return True  # too large to check; it starts like JSON
    try:
        json.loads(path.read_bytes())
    except ValueError:
        return False
    return True


def _where(path: Path) -> str:
    return f"`path` {str(path)!r}"


def unreadable(path: Path, kind: str, detail: str = "") -> ValueError:
    """The one error for a file that holds no readable weights, saying what it is instead."""
    where = _where(path)
    detail = f" ({detail})" if detail else ""
    if kind == "empty":
        return ValueError(f"{where} is empty (0 bytes); {_EXPECTED}")
    if kind in ("safetensors", "safetensors?"):
        return ValueError(
            f"{where} is a truncated or corrupt .safetensors file{detail}; re-save or re-download it"
        )
    if kind == "npy":
        return ValueError(
            f"{where} is a NumPy .npy array, not a state dict; {_EXPECTED}. Load it with numpy.load and "
            f"torch.from_numpy, then save the state dict with save_weights"
        )
    if kind == "npz":
        return ValueError(
            f"{where} is a NumPy .npz archive, not a state dict; {_EXPECTED}. Load it with numpy.load and "
            f"torch.from_numpy, then save the state dict with save_weights"
        )
    if kind == "zip_other":
        return ValueError(f"{where} is a zip archive but not a PyTorch checkpoint{detail}; {_EXPECTED}")
    if kind in ("zip", "torch_legacy"):
        return ValueError(
            f"{where} is a truncated or corrupt PyTorch file{detail}; re-save or re-download it"
        )
    if kind == "pickle":
        return ValueError(
            f"{where} is a pickle not written by torch.save, which weights-only loading cannot read{detail}; "
            f"re-save the state dict with torch.save or save_weights"
        )
    if kind == "json":
        return ValueError(f"{where} is a JSON file, not a weights file; {_EXPECTED}")
    if kind == "text":
        with open(path, "rb") as f:
            start = f.read(40).decode("utf-8", errors="replace")
        return ValueError(f"{where} is a text file (starts with {start!r}), not a weights file; {_EXPECTED}")
    return ValueError(f"{where} is not a recognised weights file{detail}; {_EXPECTED}")


def refusal(path: Path, names: list[str]) -> ValueError:
    """The security error: the pickle references globals that weights-only loading does not allow."""
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return ValueError(
        f"refusing to load {_where(path)}: its pickle references {shown}, which weights-only loading does "
        f"not allow because unpickling it could run code. If you trust the file, pass those classes in "
        f"`safe_globals`, or convert it to .safetensors"
    )


def pickle_globals(data: bytes) -> tuple[list[str], bool]:
    """Globals (``module.name``) that a pickle references, found without unpickling; and whether
    the pickle parsed to its end."""
    found: list[str] = []
    strings: list[str] = []  # strings pushed, in order (STACK_GLOBAL takes the last two)
    memo: dict[int, str] = {}  # memo index -> string, for strings fetched back with GET
    n_memo = 0
    top: str | None = None  # the string on top of the stack, if the last push was one
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPS and isinstance(arg, str | bytes):
                top = arg if isinstance(arg, str) else arg.decode("latin-1")
                strings.append(top)
                continue
            if name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                index = n_memo if name == "MEMOIZE" else int(arg) if isinstance(arg, int | str) else -1
                n_memo += name == "MEMOIZE"
                if top is not None:
                    memo[index] = top
                continue  # memoizing leaves the stack as it was
            top = None
            if name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int | str) and int(arg) in memo:
                top = memo[int(arg)]
                strings.append(top)
            elif name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(".".join(arg.split(" ", 1)))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except ValueError:
        return list(dict.fromkeys(found)), False
    return list(dict.fromkeys(found)), True


def disallowed(names: list[str]) -> list[str]:
    """Globals outside the set a plain weights pickle needs."""
    return [n for n in names if not _PLAIN_GLOBAL.match(n)]


def unsupported_global(message: str) -> str | None:
    """The global named in torch's weights-only "Unsupported global" error, if any."""
    match = _UNSUPPORTED_GLOBAL.search(message)
    return match.group(1) if match else None


def global_exists(name: str) -> bool:
    """Whether ``name`` (``module.attr`` or a builtin) could be a real object here, without
    importing any module that is not imported yet (imports run code)."""
    if "." not in name:
        return hasattr(builtins, name)
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj: object = module
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    try:
        return importlib.util.find_spec(parts[0]) is not None  # a top-level lookup imports nothing
    except (ImportError, ValueError):
        return False


def zip_kind(path: Path) -> tuple[str, str]:
    """``("zip", "")`` for a PyTorch zip checkpoint, else the kind and a detail for `unreadable`."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return "zip_corrupt", str(err)
    if any(n.endswith("data.pkl") for n in names):
        return "zip", ""
    if names and all(n.endswith(".npy") for n in names):
        return "npz", ""
    shown = ", ".join(names[:5]) or "nothing"
    return "zip_other", f"it holds {shown}"
