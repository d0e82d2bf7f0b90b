"""Safe weights I/O: save and load state dicts, Lightning checkpoints and ``.safetensors``.

Loading never unpickles arbitrary objects: ``.safetensors`` files hold only tensors,
and PyTorch files are read with ``torch.load(weights_only=True)``, which refuses any
pickled object other than tensors and plain containers (a malicious pickle cannot run
code). A non-strict load returns a [`LoadReport`][lightning_tricks.functional.LoadReport] of missing, unexpected and
shape-mismatched keys instead of failing, so a model with a replaced head loads the rest.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import check_bool, check_module, check_path, describe
from lightning_tricks.functional._io import atomic_write
from lightning_tricks.functional.finetune import _weights_format as fmt

__all__ = ["LoadReport", "load_weights", "read_weights", "save_weights"]

PRETRAINED_ATTR = "_lt_pretrained_keys"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_ALIASES_KEY = "lightning_tricks.aliases"


@dataclass
class LoadReport:
    """What [`load_weights`][lightning_tricks.functional.load_weights] did.

    Attributes:
        loaded: model keys that received a tensor from the file.
        missing: model keys the file has no tensor for (left unchanged).
        unexpected: file keys that match no model key (ignored).
        mismatched: key -> (shape in file, shape in model); left unchanged.
        prefix: how file keys were mapped, e.g. ``"strip 'model.'"``, or ``""``.

    Example:
        >>> r = LoadReport(loaded=["w"], missing=["head.weight"])
        >>> r.ok, str(r)
        (False, 'loaded 1 tensors; missing 1: head.weight')
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        """True when every key matched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.prefix:
            parts.append(f"keys mapped by {self.prefix}")
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{what} {len(keys)}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
        if self.mismatched:
            shown = ", ".join(f"{k} {a}->{b}" for k, (a, b) in list(self.mismatched.items())[:5])
            parts.append(f"shape-mismatched {len(self.mismatched)}: {shown}")
        return "; ".join(parts)


def _check_path(path: Any) -> Path:
    return Path(check_path("path", path))


def _check_safe_globals(value: Any) -> list[Any]:
    """Trusted classes/functions (or ``(object, "qualified.name")`` pairs) for weights-only loading."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"`safe_globals` must be a sequence of classes or functions; got {describe(value)}")
    items = list(value)
    for item in items:
        pair = isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)
        if not (pair or isinstance(item, type) or (callable(item) and hasattr(item, "__qualname__"))):
            raise TypeError(f"`safe_globals` must hold classes or functions; got {describe(item)}")
    return items


def _state_dict_of(obj: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"`{name}` must map str keys to tensors; bad entries: {bad[:5]}")
        return dict(obj)
    raise TypeError(
        f"`{name}` must be a torch.nn.Module or a mapping of str to tensors; got {type(obj).__name__}"
    )


def _unwrap(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(ckpt, Mapping):
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):  # {} too: a parameter-less model
            return dict(ckpt)
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = ckpt.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        keys = ", ".join(map(str, list(ckpt)[:10]))
        raise ValueError(
            f"`path` {str(path)!r} holds a dict without a state dict (no 'state_dict' or 'model' entry "
            f"of tensors); its keys: {keys}"
        )
    raise ValueError(f"`path` {str(path)!r} holds a {type(ckpt).__name__}, not a state dict")


def read_weights(
    path: str | os.PathLike[str], *, safe_globals: Iterable[Any] = ()
) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file onto the CPU, without unpickling arbitrary objects.

    Accepts ``.safetensors`` files (detected by content), plain ``torch.save`` state dicts
    and checkpoints holding a ``"state_dict"`` (Lightning) or ``"model"`` entry. PyTorch
    files are read with ``weights_only=True``.

    Args:
        path: the file.
        safe_globals: extra classes you trust that the pickle may reference (passed to
            ``torch.serialization.safe_globals``); empty by default.

    Returns:
        Key -> tensor.

    Raises:
        TypeError: ``path`` is not a path.
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as weights; one message names the path and
            what is wrong: empty, truncated or corrupt (``.safetensors`` or PyTorch), a
            text, JSON or NumPy file, a pickle not written by ``torch.save``, no state
            dict inside; or (``"refusing to load"``) its pickle references classes or
            functions outside weights-only loading's allow-list, which could run code.

    Example:
        >>> import tempfile, torch
        >>> p = tempfile.mkdtemp() + "/w.safetensors"
        >>> _ = save_weights({"w": torch.ones(2)}, p)
        >>> read_weights(p)
        {'w': tensor([1., 1.])}
    """
    return read_checkpoint(path, safe_globals=safe_globals)[0]


def read_checkpoint(
    path: str | os.PathLike[str], *, safe_globals: Iterable[Any] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Like [`read_weights`][lightning_tricks.functional.read_weights], and also the checkpoint's top-level integers and strings
    (``epoch``, ``global_step`` of a Lightning checkpoint; empty for a bare state dict
    or a ``.safetensors`` file)."""
    path = _check_path(path)
    safe_globals = _check_safe_globals(safe_globals)
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} is not a file")
    kind = fmt.sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path), {}
    if kind == "zip":
        kind, detail = fmt.zip_kind(path)
        if kind == "zip_corrupt":
            raise fmt.unreadable(path, "zip", detail)
    if kind == "pickle":
        # A pickle without torch's header: torch.load cannot read it. Say why, without unpickling.
        names, complete = fmt.pickle_globals(path.read_bytes())
        bad = fmt.disallowed(names)
        if bad:
            raise fmt.refusal(path, bad)
        raise fmt.unreadable(path, "pickle", "" if complete else "and it is truncated")
    if kind not in ("zip", "torch_legacy"):
        raise fmt.unreadable(path, kind)
    try:
        with torch.serialization.safe_globals(safe_globals):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = fmt.unsupported_global(str(err))
        if name is not None and fmt.global_exists(name):
            raise fmt.refusal(path, [name]) from None
        detail = f"it names {name!r}, which does not exist" if name else _first_line(err)
        raise fmt.unreadable(path, kind, detail) from None
    except (EOFError, RuntimeError, OSError, ValueError, struct.error, zipfile.BadZipFile) as err:
        raise fmt.unreadable(path, kind, _first_line(err)) from None
    info: dict[str, Any] = {}
    if isinstance(ckpt, Mapping):
        info = {
            k: v
            for k, v in ckpt.items()
            if isinstance(k, str) and isinstance(v, int | str) and not isinstance(v, bool)
        }
    return _unwrap(ckpt, path), info


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    size = path.stat().st_size
    if header_len > size - 8:
        raise fmt.unreadable(
            path, "safetensors", f"its header says {header_len} bytes but the file has {size}"
        )
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        aliases = json.loads(meta.get(_ALIASES_KEY, "{}"))
    except Exception as err:  # SafetensorError is not importable as a stable class
        raise fmt.unreadable(path, "safetensors", _first_line(err)) from None
    for alias, kept in aliases.items():
        if kept in tensors:
            tensors[alias] = tensors[kept]
    return tensors


def save_weights(
    obj: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Atomically save a model's (or a state dict's) tensors to ``path``.

    The format follows the suffix: ``.safetensors`` writes safetensors (tensors that
    share memory, such as tied embeddings, are stored once and restored by
    [`read_weights`][lightning_tricks.functional.read_weights]); ``.pt``, ``.pth``, ``.bin`` and ``.ckpt`` write a plain
    ``torch.save`` state dict that ``weights_only`` loading accepts. Tensors are moved
    to the CPU. Readers never see a half-written file.

    Args:
        obj: a module or a mapping of names to tensors.
        path: destination file.
        metadata: extra string metadata (safetensors only).

    Returns:
        The written path.

    Raises:
        TypeError: bad argument types.
        ValueError: an unknown suffix, or ``metadata`` with a ``.pt`` file.

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> p = save_weights(nn.Linear(2, 3), tempfile.mkdtemp() + "/lin.safetensors")
        >>> sorted(read_weights(p))
        ['bias', 'weight']
    """
    path = _check_path(path)
    state = _state_dict_of(obj, "obj")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", *_TORCH_SUFFIXES):
        raise ValueError(
            f"`path` must end in .safetensors or one of {', '.join(_TORCH_SUFFIXES)}; got {str(path)!r}"
        )
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise TypeError(f"`metadata` must map str to str; got {metadata!r}")
        if suffix != ".safetensors":
            raise ValueError(f"`metadata` is only stored in .safetensors files; got path {str(path)!r}")
    if suffix != ".safetensors":
        cpu = {k: v.detach().cpu() for k, v in state.items()}
        return atomic_write(path, lambda tmp: torch.save(cpu, tmp))

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[tuple[torch.device, int]] = set()
    for k, v in state.items():
        v = v.detach()
        ident = (
            v.device,
            v.untyped_storage().data_ptr(),
            v.storage_offset(),
            tuple(v.shape),
            v.stride(),
            v.dtype,
        )
        if v.numel() and ident in seen:
            aliases[k] = seen[ident]
            continue
        ptr = (v.device, v.untyped_storage().data_ptr())
        shared = v.numel() > 0 and ptr in storages
        storages.add(ptr)
        seen[ident] = k
        # Copies cut any remaining (partial) sharing, which safetensors refuses.
        tensors[k] = v.cpu().clone().contiguous() if shared or not v.is_contiguous() else v.cpu()
    meta = {"format": "pt", **(dict(metadata) if metadata else {})}
    if aliases:
        meta[_ALIASES_KEY] = json.dumps(aliases)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _prefixes(keys: Iterable[str]) -> set[str]:
    out = set()
    for k in keys:
        parts = k.split(".")
        for i in range(1, min(3, len(parts))):
            out.add(".".join(parts[:i]) + ".")
    return out


def _map_keys(src: dict[str, Any], dst: set[str], prefix: str | None) -> tuple[dict[str, str], str]:
    """new key -> file key, plus a description of the mapping."""

    def strip(p: str) -> dict[str, str]:
        return {k[len(p) :]: k for k in src if k.startswith(p)}

    if prefix is not None:
        return (strip(prefix), f"strip {prefix!r}") if prefix else ({k: k for k in src}, "")
    best, best_desc = {k: k for k in src}, ""
    best_score = len(set(best) & dst)
    for p in sorted(_prefixes(src), key=len):
        cand = strip(p)
        score = len(set(cand) & dst)
        if score > best_score:
            best, best_desc, best_score = cand, f"strip {p!r}", score
    for p in sorted(_prefixes(dst), key=len):
        cand = {p + k: k for k in src}
        score = len(set(cand) & dst)
        if score > best_score:
            best, best_desc, best_score = cand, f"add {p!r}", score
    return best, best_desc


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    prefix: str | None = None,
    safe_globals: Iterable[Any] = (),
) -> LoadReport:
    """Load the tensors of a weights file into ``model``; return a [`LoadReport`][lightning_tricks.functional.LoadReport].

    Reads like [`read_weights`][lightning_tricks.functional.read_weights] (safetensors, state dicts, Lightning checkpoints;
    never unpickling arbitrary objects). File keys are matched to the model's keys:
    with ``prefix=None`` the mapping that matches most keys is chosen among "as is",
    "strip a leading prefix" (a LightningModule's ``model.``, DDP's ``module.``) and
    "add a leading prefix" (loading a plain net's file into a LightningModule). Keys
    whose shapes differ are skipped and reported; tensors tied in ``model`` count as
    loaded when one of them was. The loaded key names are remembered on ``model`` so
    that [`init_weights`][lightning_tricks.functional.init_weights] (``skip_pretrained=True``) leaves them alone.

    Args:
        model: the module to fill, in place.
        path: the weights file.
        strict: raise (before changing anything) unless every key matches exactly.
        prefix: leading prefix to strip from the file's keys; ``""`` for none; ``None``
            to detect it.
        safe_globals: extra trusted classes for weights-only unpickling.

    Returns:
        A [`LoadReport`][lightning_tricks.functional.LoadReport].

    Raises:
        TypeError: bad argument types.
        ValueError: the file is refused (see [`read_weights`][lightning_tricks.functional.read_weights]), no key matches, or
            ``strict`` and some key is missing, unexpected or mismatched.

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> p = save_weights(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), tempfile.mkdtemp() + "/w.pt")
        >>> new = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 10))  # a new head
        >>> report = load_weights(new, p)
        >>> report.loaded, report.mismatched
        (['0.bias', '0.weight'], {'1.weight': ((3, 8), (10, 8)), '1.bias': ((3,), (10,))})
    """
    model = check_module("model", model)
    check_bool("strict", strict)
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"`prefix` must be a string or None; got {prefix!r}")
    src = read_weights(path, safe_globals=safe_globals)
    target = model.state_dict(keep_vars=True)
    mapping, desc = _map_keys(src, set(target), prefix)
    report = LoadReport(prefix=desc)
    used_file_keys = set()
    to_load: dict[str, torch.Tensor] = {}
    for new_key, file_key in mapping.items():
        if new_key not in target:
            continue
        used_file_keys.add(file_key)
        value, have = src[file_key], target[new_key]
        if isinstance(have, torch.Tensor) and tuple(value.shape) != tuple(have.shape):
            report.mismatched[new_key] = (tuple(value.shape), tuple(have.shape))
        else:
            to_load[new_key] = value
    report.unexpected = sorted(k for k in src if k not in used_file_keys)
    # Tied tensors (one storage, several names) are filled through any one of their names.
    groups: dict[tuple, list[str]] = {}
    for k, v in target.items():
        if isinstance(v, torch.Tensor) and v.numel():
            groups.setdefault((v.device, v.untyped_storage().data_ptr(), v.storage_offset()), []).append(k)
    tied_ok = {k for names in groups.values() if any(n in to_load for n in names) for k in names}
    report.missing = sorted(
        k for k in target if k not in to_load and k not in tied_ok and k not in report.mismatched
    )
    report.loaded = sorted(set(to_load) | (tied_ok - set(report.mismatched)))
    if not to_load:
        raise ValueError(
            f"no key of `path` {str(path)!r} matches `model` ({type(model).__name__}); "
            f"file keys: {', '.join(list(src)[:5])}; model keys: {', '.join(list(target)[:5])}"
        )
    if strict and not report.ok:
        raise ValueError(f"`strict=True` but the weights in {str(path)!r} do not match the model: {report}")
    model.load_state_dict(to_load, strict=False)
    setattr(model, PRETRAINED_ATTR, frozenset(getattr(model, PRETRAINED_ATTR, ())) | frozenset(report.loaded))
    return report
