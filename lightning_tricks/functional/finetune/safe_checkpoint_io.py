"""Pickle-free training checkpoints: every tensor in safetensors, everything else in JSON.

The functional core of [`SafeCheckpointIO`][lightning_tricks.SafeCheckpointIO] (pair:
``SafeCheckpointIO.save_checkpoint`` -> [`save_checkpoint`][lightning_tricks.functional.save_checkpoint],
``SafeCheckpointIO.load_checkpoint`` -> [`load_checkpoint`][lightning_tricks.functional.load_checkpoint]), usable from any loop.

Layout (format version 1): ONE safetensors file. Its tensors are the checkpoint's tensors,
named by their key path (``state_dict/layer.weight``, ``optimizer_states/0/state/0/exp_avg``);
its ``__metadata__`` holds ``format`` (``"lightning_tricks.safe_checkpoint"``),
``format_version`` (``"1"``) and ``checkpoint``: the checkpoint as JSON in which every
tensor is replaced by ``{"$tensor": "<name>"}``. Values JSON cannot hold are written with a
small, explicit set of encodings (objects with one ``$``-key): ``$tuple``, ``$set``,
``$frozenset``, ``$dict`` (a dict whose keys are not all strings, as ``[key, value]`` pairs),
``$odict`` (an ``OrderedDict``, with the ``_metadata`` of a module ``state_dict``),
``$float`` (``"nan"``, ``"inf"``, ``"-inf"``), ``$bytes`` (base64), ``$dtype``,
``$device``, ``$size``. Anything else is refused at save time, naming its key path. Tied
tensors (same storage, offset, shape, strides, dtype) are stored once and load as one tensor. One file
makes the write atomic (temporary file + rename) and removal a single delete.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from safetensors.torch import save_file as st_save_file

from lightning_tricks.functional._checks import check_bool, check_device, check_path
from lightning_tricks.functional._io import atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "UnsafeCheckpointError",
    "convert_checkpoint",
    "is_safe_checkpoint",
    "load_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
]

FORMAT = "lightning_tricks.safe_checkpoint"
FORMAT_VERSION = 1

_PathLike = str | os.PathLike[str]


class UnsafeCheckpointError(ValueError):
    """A file is not a safe checkpoint (e.g. a pickled ``.ckpt``) and pickle was not allowed.

    A ``ValueError``, so ``except ValueError`` catches it too.

    Example:
        >>> issubclass(UnsafeCheckpointError, ValueError)
        True
    """


def _fs(path: _PathLike, name: str = "path") -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and its path for ``path`` (checked: a str or ``os.PathLike``, named
    ``name`` in errors)."""
    fs, p = fsspec.core.url_to_fs(check_path(name, path))
    return fs, p


def _key(parts: tuple[Any, ...]) -> str:
    return "checkpoint" + "".join(f"[{p!r}]" for p in parts)


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._aliases: dict[tuple[Any, ...], str] = {}
        self._storages: set[int] = set()

    def tensor(self, t: torch.Tensor, parts: tuple[Any, ...]) -> dict[str, Any]:
        if t.is_sparse or t.layout != torch.strided or t.is_quantized:
            raise TypeError(
                f"{_key(parts)} is a {t.layout} tensor; only dense (strided) tensors can be saved"
            )
        # The same tensor twice (tied weights: two state-dict entries of one parameter) is stored
        # once and loads as one tensor.
        alias = (
            (str(t.device), t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else None
        )
        if alias is not None and alias in self._aliases:
            return {"$tensor": self._aliases[alias]}
        name = "/".join(str(p) for p in parts) or "tensor"
        base, i = name, 1
        while name in self.tensors:
            name, i = f"{base}#{i}", i + 1
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in self._storages:  # another view of a storage already stored: its own copy
            t = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            t = t.contiguous()
        elif ptr:
            self._storages.add(ptr)
        self.tensors[name] = t
        if alias is not None:
            self._aliases[alias] = name
        return {"$tensor": name}

    def encode(self, value: Any, parts: tuple[Any, ...] = ()) -> Any:
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, torch.Tensor):
            return self.tensor(value, parts)
        if isinstance(value, torch.Size):
            return {"$size": list(value)}
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"$device": str(value)}
        if type(value) is list:
            return [self.encode(v, (*parts, i)) for i, v in enumerate(value)]
        if type(value) is tuple:
            return {"$tuple": [self.encode(v, (*parts, i)) for i, v in enumerate(value)]}
        if type(value) in (set, frozenset):
            kind = "$set" if type(value) is set else "$frozenset"
            return {kind: [self.encode(v, (*parts, "<element>")) for v in value]}
        if type(value) is bytes:
            return {"$bytes": base64.b64encode(value).decode("ascii")}
        if isinstance(value, OrderedDict):
            out: dict[str, Any] = {"$odict": self._pairs(value, parts)}
            meta = getattr(value, "_metadata", None)
            if meta is not None:
                out["metadata"] = self.encode(meta, (*parts, "_metadata"))
            return out
        if isinstance(value, dict):  # dict and its subclasses (Lightning's AttributeDict) load as dict
            if all(type(k) is str and not k.startswith("$") for k in value):
                return {k: self.encode(v, (*parts, k)) for k, v in value.items()}
            return {"$dict": self._pairs(value, parts)}
        raise TypeError(
            f"{_key(parts)} is a {type(value).__module__}.{type(value).__qualname__}, which a safe checkpoint "
            "cannot hold without pickle; allowed: tensors, None, bool, int, float, str, bytes, list, tuple, "
            "set, dict, OrderedDict, torch.dtype, torch.device, torch.Size. Store it as one of these (e.g. its "
            "name or config), or leave it out of the checkpoint (e.g. `save_hyperparameters(ignore=[...])`)"
        )

    def _pairs(self, value: Mapping[Any, Any], parts: tuple[Any, ...]) -> list[list[Any]]:
        return [[self.encode(k, (*parts, "<key>")), self.encode(v, (*parts, k))] for k, v in value.items()]


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) >= 1 and any(k.startswith("$") for k in value):
        (tag,) = (k for k in value if k.startswith("$"))
        payload = value[tag]
        if tag == "$tensor":
            return tensors[payload]
        if tag == "$tuple":
            return tuple(_decode(v, tensors) for v in payload)
        if tag == "$set":
            return {_decode(v, tensors) for v in payload}
        if tag == "$frozenset":
            return frozenset(_decode(v, tensors) for v in payload)
        if tag == "$dict":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in payload}
        if tag == "$odict":
            od: OrderedDict[Any, Any] = OrderedDict(
                (_decode(k, tensors), _decode(v, tensors)) for k, v in payload
            )
            if "metadata" in value:
                od._metadata = _decode(value["metadata"], tensors)  # type: ignore[attr-defined]  # state_dict versions
            return od
        if tag == "$float":
            return float(payload)
        if tag == "$bytes":
            return base64.b64decode(payload)
        if tag == "$dtype":
            dtype = getattr(torch, payload, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {payload!r} in the checkpoint")
            return dtype
        if tag == "$device":
            return torch.device(payload)
        if tag == "$size":
            return torch.Size(payload)
        raise ValueError(f"unknown encoding {tag!r} in the checkpoint (written by a newer version?)")
    return {k: _decode(v, tensors) for k, v in value.items()}


def encode_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split ``checkpoint`` into (tensors by name, safetensors metadata holding the JSON).

    Raises:
        TypeError: a value is of a type a safe checkpoint cannot hold; the message names its key path.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"`checkpoint` must be a dict, got {type(checkpoint).__name__}")
    enc = _Encoder()
    tree = enc.encode(dict(checkpoint))
    text = json.dumps(tree, allow_nan=False, separators=(",", ":"))
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "checkpoint": text}
    return enc.tensors, meta


def save_checkpoint(checkpoint: Mapping[str, Any], path: _PathLike) -> None:
    """Write ``checkpoint`` (any dict of tensors and plain values) to ``path`` without pickle.

    Local paths are written atomically (a temporary file in the same folder, then a rename):
    a crash mid-write leaves the previous file at ``path`` intact. Remote ``fsspec`` URLs
    (``s3://``, ``memory://``, ...) are written with one ``pipe`` call (one PUT on object stores).

    Args:
        checkpoint: the checkpoint dict (e.g. Lightning's ``trainer._checkpoint_connector.dump_checkpoint()``).
        path: destination path or ``fsspec`` URL; parent folders are created.

    Raises:
        TypeError: ``path`` is not a path, or a value cannot be stored without pickle; the
            message names its key path.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/step.ckpt"
        >>> save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 3, "betas": (0.9, 0.99)}, path)
        >>> ckpt = load_checkpoint(path)
        >>> state = ckpt["state_dict"]
        >>> ckpt["epoch"], ckpt["betas"], state["w"].tolist()
        (3, (0.9, 0.99), [1.0, 1.0])
    """
    fs, p = _fs(path)
    tensors, meta = encode_checkpoint(checkpoint)
    if isinstance(fs, LocalFileSystem):
        atomic_write(p, lambda tmp: st_save_file(tensors, tmp, metadata=meta))
    else:
        parent = os.path.dirname(p)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(p, st_save(tensors, metadata=meta))


def _read_head(fs: fsspec.AbstractFileSystem, p: str) -> bytes:
    with fs.open(p, "rb") as f:
        return bytes(f.read(16))


def is_safe_checkpoint(path: _PathLike) -> bool:
    """Whether ``path`` is a file written by [`save_checkpoint`][lightning_tricks.functional.save_checkpoint] (reads only its header).

    Raises:
        TypeError: ``path`` is not a path (``str`` or ``os.PathLike``).
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> save_checkpoint({"epoch": 1}, d + "/a.ckpt"); torch.save({"epoch": 1}, d + "/b.ckpt")
        >>> is_safe_checkpoint(d + "/a.ckpt"), is_safe_checkpoint(d + "/b.ckpt")
        (True, False)
    """
    fs, p = _fs(path)
    if not fs.isfile(p):
        what = "is a folder, not a file" if fs.isdir(p) else "does not exist"
        raise (IsADirectoryError if fs.isdir(p) else FileNotFoundError)(f"`path` {str(path)!r} {what}")
    head = _read_head(fs, p)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    if n > 100_000_000 + 8:
        return False
    with fs.open(p, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return False
    return isinstance(header, dict) and header.get("__metadata__", {}).get("format") == FORMAT


def _describe(fs: fsspec.AbstractFileSystem, p: str) -> str:
    head = _read_head(fs, p)
    if head.startswith(b"PK\x03\x04"):
        return "a pickled torch.save checkpoint (zip archive)"
    if head[:1] == b"\x80":
        return "a pickled checkpoint (legacy torch.save format)"
    return "not a safe checkpoint"


def load_checkpoint(
    path: _PathLike,
    map_location: str | torch.device | None = None,
    *,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Read a checkpoint written by [`save_checkpoint`][lightning_tricks.functional.save_checkpoint]; never unpickles unless told to.

    Args:
        path: path or ``fsspec`` URL of the checkpoint.
        map_location: device the tensors are loaded to (``None``: CPU).
        allow_pickle: load a pickled ``torch.save`` checkpoint too (with ``torch.load(weights_only=False)``,
            which can run arbitrary code: only for files you trust).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: ``path`` is not a safe checkpoint (e.g. a pickled ``.ckpt``) and
            ``allow_pickle`` is False.
        TypeError: ``path`` is not a path (``str`` or ``os.PathLike``), ``map_location`` not a
            device or device string, or ``allow_pickle`` not a bool.
        ValueError: ``map_location`` names no device.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/old.ckpt"
        >>> torch.save({"epoch": 1}, path)
        >>> try:
        ...     load_checkpoint(path)
        ... except UnsafeCheckpointError as err:
        ...     print("refused:", "pickled torch.save checkpoint" in str(err))
        refused: True
    """
    fs, p = _fs(path)
    if map_location is not None and not isinstance(map_location, str | torch.device):
        raise TypeError(
            f"`map_location` must be None, a device or a device string for a safe checkpoint, got {map_location!r}"
        )
    device = str(check_device("map_location", map_location)) if map_location is not None else "cpu"
    check_bool("allow_pickle", allow_pickle)
    if not fs.exists(p):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if not is_safe_checkpoint(path):
        if allow_pickle:
            with fs.open(p, "rb") as f:
                return torch.load(f, map_location=map_location, weights_only=False)
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it is {_describe(fs, p)}, and unpickling a file can run arbitrary "
            "code. If you trust the file, convert it once with `python -m lightning_tricks.finetune.safe_checkpoint_io "
            "convert IN OUT` (or `convert_checkpoint(IN, OUT)`), or pass `allow_pickle=True`"
        )
    if isinstance(fs, LocalFileSystem):
        with safe_open(p, framework="pt") as f:
            meta = f.metadata()
        tensors = st_load_file(p, device=device)
    else:
        data = fs.cat_file(p)
        tensors = st_load(data)
        if device != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n])["__metadata__"]
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} is safe checkpoint format version {version}; this version of lightning_tricks "
            f"reads versions up to {FORMAT_VERSION}: upgrade lightning_tricks"
        )
    return dict(_decode(json.loads(meta["checkpoint"]), tensors))


def convert_checkpoint(src: _PathLike, dst: _PathLike) -> dict[str, Any]:
    """Convert a pickled checkpoint that you TRUST into the safe format.

    ``src`` is loaded with ``torch.load(weights_only=False)``: this unpickles it, which can run
    arbitrary code. Run it once, on files you trust, then share and load ``dst`` instead.

    Args:
        src: the pickled ``.ckpt`` (path or ``fsspec`` URL).
        dst: where the safe checkpoint is written.

    Returns:
        The checkpoint dict that was written.

    Raises:
        TypeError: ``src``/``dst`` is not a path, or a value in ``src`` cannot be stored
            without pickle (the message names its key path).
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``src`` is not a readable checkpoint.

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 2}, d + "/old.ckpt")
        >>> _ = convert_checkpoint(d + "/old.ckpt", d + "/new.ckpt")
        >>> load_checkpoint(d + "/new.ckpt")["epoch"]
        2
    """
    fs, p = _fs(src, "src")
    _fs(dst, "dst")
    if not fs.exists(p):
        raise FileNotFoundError(f"`src` {str(src)!r} does not exist")
    if not fs.isfile(p):
        raise IsADirectoryError(f"`src` {str(src)!r} is a folder, not a checkpoint file")
    if is_safe_checkpoint(src):
        checkpoint = load_checkpoint(src)
    else:
        try:
            with fs.open(p, "rb") as f:
                checkpoint = torch.load(f, map_location="cpu", weights_only=False)
        except Exception as err:  # whatever the unpickler raises on a file that is no checkpoint
            raise ValueError(f"`src` {str(src)!r} cannot be read as a checkpoint: {err!r:.200}") from None
    if not isinstance(checkpoint, dict):
        raise TypeError(f"`src` {str(src)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    save_checkpoint(checkpoint, dst)
    return checkpoint


def remove_checkpoint(path: _PathLike) -> None:
    """Delete the checkpoint at ``path`` (one file) if it exists."""
    fs, p = _fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)
