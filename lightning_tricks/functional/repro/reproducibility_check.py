"""Per-tensor checksums of a model's weights, and where two runs' checksums first diverge.

The functional pair of [`ReproducibilityCheck`][lightning_tricks.ReproducibilityCheck]: it records with
[`tensor_checksums`][lightning_tricks.functional.tensor_checksums] and [`save_checksums`][lightning_tricks.functional.save_checksums] after every epoch and compares with
[`first_divergence`][lightning_tricks.functional.first_divergence].

A checksum holds two position-weighted hashes of the tensor's raw bytes, plus the
float64 sum and L2 norm (for comparisons with a tolerance). All tensors are reduced on
their own device and the results leave it in ONE transfer.

The hashes are exact for structured differences: each hash is
``sum_i w_i * r_i mod p`` over the tensor's 32-bit words ``w_i`` read as unsigned
(``0 <= w_i < 2**32``), with a prime ``p > 2**32`` and pseudo-random weights
``0 < r_i < 2**31`` (so every product fits in int64 and no two words are equal mod
``p``). A change of any one word by any amount therefore changes both hashes, and the
weights are not a polynomial of the position, so patterns such as ``(+1, -2, +1)`` do
not cancel. The two hashes use different primes and weights; other differences
(swapped elements included) go unnoticed only by chance, about 2**-62.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import check_bool, check_number, check_path, describe
from lightning_tricks.functional._io import atomic_write_text

__all__ = [
    "Divergence",
    "first_divergence",
    "load_checksums",
    "save_checksums",
    "tensor_checksums",
]

_PRIMES = (4294967311, 4294967357)  # the two smallest primes above 2**32
_M = 2**31 - 1  # weights live in [1, _M - 1]: word * weight < 2**63
_MIX = ((48271, 11, 69621), (16807, 7, 40692))  # per hash: multiplier, offset, second multiplier
_BLOCK = 2**16  # position i has weight table[i % _BLOCK] * salt[i // _BLOCK] (mod p)
_CHUNK_BLOCKS = 16  # blocks per chunk: bounded temporary memory; sums stay < 2**63
_MASK32 = 2**32 - 1
FORMAT = "lightning-tricks/checksums"
VERSION = 2  # version 1 hashed residues mod 2**31 - 1 (structured collisions); not comparable
_cache: dict[tuple[str, int | None, str], torch.Tensor] = {}
_CHECKSUM_KEYS = frozenset({"hash", "sum", "norm", "shape", "dtype"})


def _mix(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pseudo-random values in ``[1, _M - 1]`` of the int64 positions ``x``, for hash ``k``."""
    mult, offset, mult2 = _MIX[k]
    x = (x % _M * mult + offset) % _M
    x = x ^ (x >> 16)  # the xor-shifts make the weights non-polynomial in the position
    x = x * mult2 % _M
    x = x ^ (x >> 13)
    return x % (_M - 1) + 1


def _table(device: torch.device, kind: str, n: int) -> torch.Tensor:
    """Cached per device: ``(2, n)`` weights (``kind="w"``) or block salts (``"s"``, < 2**30)."""
    key = (device.type, device.index, kind)
    cached = _cache.get(key)
    if cached is None or cached.shape[1] < n:
        size = max(n, 2 * cached.shape[1]) if cached is not None else max(n, 64)
        if kind == "w":
            size = min(size, _BLOCK)
        pos = torch.arange(size, dtype=torch.int64, device=device)
        rows = [_mix(pos, k) for k in range(len(_PRIMES))]
        if kind == "s":  # salt * (residue < p) must stay below 2**63
            rows = [r % (2**30 - 1) + 1 for r in rows]
        cached = torch.stack(rows)
        _cache[key] = cached
    return cached[:, :n]


def _int_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes as a flat int64 tensor of unsigned 32/16/8-bit words."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    for dtype, size in ((torch.int32, 4), (torch.int16, 2)):
        if raw.numel() % size == 0:
            return raw.view(dtype).to(torch.int64) & _MASK32
    return raw.to(torch.int64)


def _summary(t: torch.Tensor) -> torch.Tensor:
    """int64 tensor of 4: two byte hashes, and the float64 sum and norm reinterpreted as int64."""
    words = _int_view(t)
    n, device = words.numel(), words.device
    primes = _cache.get((device.type, device.index, "p"))
    if primes is None:  # one host-to-device copy per device, not per tensor
        primes = _cache[(device.type, device.index, "p")] = torch.tensor(_PRIMES, device=device)
    hashes = words.new_zeros(len(_PRIMES))
    salts = _table(device, "s", max(1, -(-n // _BLOCK)))
    step = _BLOCK * _CHUNK_BLOCKS
    for start in range(0, n, step):  # bounded temporary memory for huge tensors
        chunk = words[start : start + step]
        full, tail = divmod(chunk.numel(), _BLOCK)
        first = start // _BLOCK
        parts = []
        if full:
            blocks = chunk[: full * _BLOCK].view(1, full, _BLOCK)
            weights = _table(device, "w", _BLOCK)[:, None, :]
            sums = torch.remainder(blocks * weights, primes[:, None, None]).sum(-1)  # (2, full)
            parts.append(sums % primes[:, None] * salts[:, first : first + full])
        if tail:
            rest = chunk[full * _BLOCK :][None, :] * _table(device, "w", tail)
            sums = torch.remainder(rest, primes[:, None]).sum(-1, keepdim=True)
            parts.append(sums % primes[:, None] * salts[:, first + full : first + full + 1])
        for part in parts:  # each entry < 2**63; reduce before adding
            hashes = (hashes + (part % primes[:, None]).sum(-1)) % primes
    values = t.detach().reshape(-1)
    values = torch.view_as_real(values).reshape(-1) if values.dtype.is_complex else values
    values = values.to(torch.float64)
    stats = torch.stack([values.sum(), values.norm()]) if values.numel() else values.new_zeros(2)
    return torch.cat([hashes, stats.view(torch.int64)])


def tensor_checksums(
    tensors: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    *,
    buffers: bool = False,
) -> dict[str, dict[str, Any]]:
    """Checksum every tensor; one device-to-host transfer in all.

    Args:
        tensors: a module (its named parameters, and buffers if ``buffers``), a mapping
            name -> tensor, or ``(name, tensor)`` pairs. Tensors may live on any device
            (those on different devices are gathered per device).
        buffers: with a module, include its buffers (e.g. BatchNorm running stats).

    Returns:
        name -> ``{"hash": 18 hex digits, "sum": float, "norm": float, "shape": [...],
        "dtype": "float32"}``, in the order given. A change of any single 32-bit word
        always changes ``hash``; other differences leave it equal only by chance (about
        2**-62).

    Raises:
        TypeError: ``tensors`` holds something that is not a tensor.

    Example:
        >>> import torch
        >>> a = tensor_checksums({"w": torch.ones(3)}).get("w")
        >>> a.get("sum"), a.get("shape")
        (3.0, [3])
        >>> b = tensor_checksums({"w": torch.tensor([1.0, 1.0, 1.0 + 2**-23])}).get("w")
        >>> a.get("hash") == b.get("hash")
        False
    """
    buffers = check_bool("buffers", buffers)
    items: list[tuple[str, torch.Tensor]]
    if isinstance(tensors, nn.Module):
        items = list(tensors.named_parameters())
        if buffers:
            items += list(tensors.named_buffers())
    elif isinstance(tensors, Mapping):
        items = list(tensors.items())
    else:
        try:
            items = list(tensors)
        except TypeError:
            raise TypeError(
                "`tensors` must be an nn.Module, a mapping name -> tensor or (name, tensor) pairs; "
                f"got {type(tensors).__name__}"
            ) from None
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise TypeError(f"`tensors` must hold (name, tensor) pairs; got {item!r:.80}")
    if not items:
        return {}
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(items):
        by_device.setdefault(t.device, []).append(i)
    rows: list[Any] = [None] * len(items)
    for idx in by_device.values():
        stacked = torch.stack([_summary(items[i][1]) for i in idx])
        host = stacked.cpu()  # the one transfer (per device)
        ints, floats = host[:, :2].tolist(), host[:, 2:].contiguous().view(torch.float64).tolist()
        for j, i in enumerate(idx):
            rows[i] = (ints[j], floats[j])
    out = {}
    for (name, t), (h, f) in zip(items, rows):
        out[str(name)] = {
            "hash": f"{h[0]:09x}{h[1]:09x}",
            "sum": f[0],
            "norm": f[1],
            "shape": list(t.shape),
            "dtype": str(t.dtype).replace("torch.", ""),
        }
    return out


@dataclass(frozen=True)
class Divergence:
    """Where two runs first differ.

    Attributes:
        epoch: the first epoch whose checksums differ.
        name: the first parameter (in recorded order) that differs in that epoch.
        reason: what differs (hash, shape, dtype, sum/norm beyond tolerance, missing).

    Example:
        >>> print(Divergence(2, "head.weight", "bitwise different"))
        runs diverge at epoch 2, parameter 'head.weight': bitwise different
    """

    epoch: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"runs diverge at epoch {self.epoch}, parameter {self.name!r}: {self.reason}"


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(b)


def _compare(name: str, run: Mapping[str, Any], ref: Mapping[str, Any], rtol: float, atol: float) -> str:
    if list(run["shape"]) != list(ref["shape"]):
        return f"shape {run['shape']} != reference {ref['shape']}"
    if run["dtype"] != ref["dtype"]:
        return f"dtype {run['dtype']} != reference {ref['dtype']}"
    if run["hash"] == ref["hash"]:
        # equal bytes give equal sums and norms; trust an equal hash only when they agree
        for key in ("sum", "norm"):
            if not _close(run[key], ref[key], 0.0, 0.0):
                return f"hash equal but {key} {run[key]!r} != reference {ref[key]!r} (hash collision)"
        return ""
    if rtol == 0 and atol == 0:
        return f"bitwise different (sum {run['sum']!r} vs reference {ref['sum']!r})"
    for key in ("sum", "norm"):
        if not _close(run[key], ref[key], rtol, atol):
            return f"{key} {run[key]!r} vs reference {ref[key]!r} beyond rtol={rtol}, atol={atol}"
    return ""


def _check_records(name: str, records: Any) -> dict[int, dict[str, Mapping[str, Any]]]:
    """``records`` as epoch -> name -> checksum (from [`tensor_checksums`][lightning_tricks.functional.tensor_checksums]), checked
    through; a ``TypeError``/``ValueError`` naming ``name`` and the faulty entry otherwise."""
    if not isinstance(records, Mapping):
        raise TypeError(f"`{name}` must be a mapping epoch -> name -> checksum; got {describe(records)}")
    out: dict[int, dict[str, Mapping[str, Any]]] = {}
    for epoch, sums in records.items():
        if isinstance(epoch, bool) or not isinstance(epoch, Integral):
            raise TypeError(f"`{name}` must have int epochs as keys; got {describe(epoch)}")
        if not isinstance(sums, Mapping):
            raise TypeError(f"`{name}[{epoch}]` must be a mapping name -> checksum; got {describe(sums)}")
        for key, checksum in sums.items():
            where = f"`{name}[{epoch}][{key!r}]`"
            if not isinstance(key, str):
                raise TypeError(f"`{name}[{epoch}]` must have str names as keys; got {describe(key)}")
            if not isinstance(checksum, Mapping) or not set(checksum) >= _CHECKSUM_KEYS:
                raise TypeError(
                    f"{where} must be a checksum from tensor_checksums() with keys "
                    f"{sorted(_CHECKSUM_KEYS)}; got {describe(checksum)}"
                )
            if not all(isinstance(checksum[k], str) for k in ("hash", "dtype")) or not all(
                isinstance(checksum[k], Real) and not isinstance(checksum[k], bool) for k in ("sum", "norm")
            ):
                raise TypeError(
                    f"{where} must hold str 'hash'/'dtype' and number 'sum'/'norm'; got {checksum!r:.120}"
                )
            if not isinstance(checksum["shape"], Sequence) or isinstance(checksum["shape"], str):
                raise TypeError(f"{where}['shape'] must be a list of ints; got {describe(checksum['shape'])}")
        out[int(epoch)] = dict(sums)
    return out


def first_divergence(
    run: Mapping[int, Mapping[str, Mapping[str, Any]]],
    reference: Mapping[int, Mapping[str, Mapping[str, Any]]],
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> Divergence | None:
    """The first epoch and parameter where ``run`` differs from ``reference``, or ``None``.

    Only epochs present in both are compared, in increasing order; within an epoch,
    parameters in ``run``'s order. With ``rtol = atol = 0`` (default) contents must be
    bitwise equal; otherwise tensors whose bytes differ still pass when their sum and
    norm agree within ``atol + rtol * |reference|``.

    Args:
        run: epoch -> name -> checksum (from [`tensor_checksums`][lightning_tricks.functional.tensor_checksums]).
        reference: the same for the reference run.
        rtol: relative tolerance, ``>= 0``.
        atol: absolute tolerance, ``>= 0``.

    Returns:
        The first [`Divergence`][lightning_tricks.functional.Divergence], or ``None`` if the common epochs agree.

    Raises:
        TypeError: ``run`` or ``reference`` is not epoch -> name -> checksum.
        ValueError: a tolerance is negative or not finite.

    Example:
        >>> import torch
        >>> ref = {0: tensor_checksums({"w": torch.ones(2)})}
        >>> run = {0: tensor_checksums({"w": torch.tensor([1.0, 1.001])})}
        >>> print(first_divergence(run, ref))  # doctest: +ELLIPSIS
        runs diverge at epoch 0, parameter 'w': bitwise different ...
        >>> first_divergence(run, ref, atol=0.01) is None
        True
    """
    run = _check_records("run", run)
    reference = _check_records("reference", reference)
    rtol = check_number("rtol", rtol, minimum=0)
    atol = check_number("atol", atol, minimum=0)
    for epoch in sorted(set(run) & set(reference)):
        a, b = run[epoch], reference[epoch]
        for name in a:
            if name not in b:
                return Divergence(epoch, name, "missing from the reference run")
            reason = _compare(name, a[name], b[name], rtol, atol)
            if reason:
                return Divergence(epoch, name, reason)
        for name in b:
            if name not in a:
                return Divergence(epoch, name, "in the reference run but missing from this run")
    return None


def save_checksums(path: str | os.PathLike[str], records: Mapping[int, Mapping[str, Any]]) -> None:
    """Atomically write epoch -> checksums as JSON (readable by [`load_checksums`][lightning_tricks.functional.load_checksums]).

    Args:
        path: the file to (over)write.
        records: epoch -> name -> checksum.

    Raises:
        TypeError: ``path`` is not a path (``str`` or ``os.PathLike``), or ``records`` is
            not epoch -> name -> checksum.
        IsADirectoryError: ``path`` is a folder.

    Example:
        >>> import tempfile, os, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "sums.json")
        >>> save_checksums(path, {0: tensor_checksums({"w": torch.ones(1)})})
        >>> load_checksums(path) == {0: tensor_checksums({"w": torch.ones(1)})}
        True
    """
    path = check_path("path", path)
    records = _check_records("records", records)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "epochs": [{"epoch": e, "checksums": records[e]} for e in sorted(records)],
    }
    try:
        text = json.dumps(payload, indent=1)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`records` must hold JSON values only (as tensor_checksums() gives): {err}"
        ) from None
    atomic_write_text(path, text)


def load_checksums(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Read a file written by [`save_checksums`][lightning_tricks.functional.save_checksums]: epoch -> name -> checksum.

    Args:
        path: the checksum file.

    Raises:
        TypeError: ``path`` is not a path (``str`` or ``os.PathLike``; file descriptors
            are refused).
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a checksum file, or one of another format version
            (version 1 files, whose hashes could collide, must be recorded again).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "empty.json")
        >>> save_checksums(path, {})
        >>> load_checksums(path)
        {}
    """
    path = check_path("path", path)
    with open(path, encoding="utf-8") as f:
        try:
            payload = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"checksum file {path!r} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a checksum file (expected format {FORMAT!r})")
    version = payload.get("version", 0)
    if not isinstance(version, int):
        raise ValueError(f"checksum file {path!r} has no valid version; got {version!r}")
    if version < VERSION:
        raise ValueError(
            f"checksum file {path!r} has version {version}, whose hashes cannot be "
            f"compared with this version's ({VERSION}); record it again (rerun the reference run)"
        )
    if version > VERSION:
        raise ValueError(f"checksum file {path!r} has version {version}; this reads <= {VERSION}")
    epochs = payload.get("epochs")
    if not isinstance(epochs, list) or not all(
        isinstance(e, dict) and isinstance(e.get("epoch"), int) and "checksums" in e for e in epochs
    ):
        raise ValueError(
            f"checksum file {path!r} is damaged: 'epochs' must list {{'epoch', 'checksums'}} entries"
        )
    try:
        return _check_records("records", {e["epoch"]: e["checksums"] for e in epochs})
    except TypeError as err:
        raise ValueError(f"checksum file {path!r} is damaged: {err}") from None
