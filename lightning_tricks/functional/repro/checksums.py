"""Per-tensor checksums of a model's weights, and where two runs' checksums first diverge.

A checksum holds two 31-bit position-weighted hashes of the tensor's raw bytes (so a
single flipped bit changes it), plus the float64 sum and L2 norm (for comparisons with
a tolerance). All tensors are reduced on their own device and the results leave it in
ONE transfer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_tricks.functional._checks import check_bool, check_number
from lightning_tricks.functional._io import atomic_write_text

__all__ = [
    "Divergence",
    "first_divergence",
    "load_checksums",
    "save_checksums",
    "tensor_checksums",
]

_P = 2**31 - 1  # Mersenne prime: products of two residues fit in int64 without overflow
_SALTS = ((48271, 11), (69621, 7))  # (multiplier, offset) of the two position weightings
_CHUNK = 2**22
FORMAT = "lightning-tricks/checksums"
VERSION = 1


def _int_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes as a flat int64 tensor of 32/16/8-bit words (no value change)."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    for dtype, size in ((torch.int32, 4), (torch.int16, 2)):
        if raw.numel() % size == 0:
            return raw.view(dtype).to(torch.int64)
    return raw.to(torch.int64)


def _summary(t: torch.Tensor) -> torch.Tensor:
    """int64 tensor of 4: two byte hashes, and the float64 sum and norm reinterpreted as int64."""
    words = _int_view(t)
    hashes = [words.new_zeros(()) for _ in _SALTS]
    for start in range(0, words.numel(), _CHUNK):  # bounded temporary memory for huge tensors
        chunk = torch.remainder(words[start : start + _CHUNK], _P)
        pos = torch.arange(start, start + chunk.numel(), device=words.device, dtype=torch.int64)
        for k, (mult, offset) in enumerate(_SALTS):
            weights = torch.remainder(pos * mult + offset, _P)
            hashes[k] = hashes[k] + torch.remainder(chunk * weights, _P).sum()
    hashes = [torch.remainder(h, _P) for h in hashes]
    values = t.detach().reshape(-1)
    values = torch.view_as_real(values).reshape(-1) if values.dtype.is_complex else values
    values = values.to(torch.float64)
    stats = torch.stack([values.sum(), values.norm()]) if values.numel() else values.new_zeros(2)
    return torch.cat([torch.stack(hashes), stats.view(torch.int64)])


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
        name -> ``{"hash": 16 hex digits, "sum": float, "norm": float, "shape": [...],
        "dtype": "float32"}``, in the order given. Equal ``hash`` means bitwise-equal
        contents (up to a ~2**-62 collision chance).

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
            "hash": f"{h[0]:08x}{h[1]:08x}",
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
        return ""
    if rtol == 0 and atol == 0:
        return f"bitwise different (sum {run['sum']!r} vs reference {ref['sum']!r})"
    for key in ("sum", "norm"):
        if not _close(run[key], ref[key], rtol, atol):
            return f"{key} {run[key]!r} vs reference {ref[key]!r} beyond rtol={rtol}, atol={atol}"
    return ""


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
        run: epoch -> name -> checksum (from :func:`tensor_checksums`).
        reference: the same for the reference run.
        rtol: relative tolerance, ``>= 0``.
        atol: absolute tolerance, ``>= 0``.

    Returns:
        The first :class:`Divergence`, or ``None`` if the common epochs agree.

    Raises:
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
    """Atomically write epoch -> checksums as JSON (readable by :func:`load_checksums`).

    Args:
        path: the file to (over)write.
        records: epoch -> name -> checksum.

    Example:
        >>> import tempfile, os, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "sums.json")
        >>> save_checksums(path, {0: tensor_checksums({"w": torch.ones(1)})})
        >>> load_checksums(path) == {0: tensor_checksums({"w": torch.ones(1)})}
        True
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "epochs": [{"epoch": int(e), "checksums": dict(records[e])} for e in sorted(records)],
    }
    atomic_write_text(path, json.dumps(payload, indent=1))


def load_checksums(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Read a file written by :func:`save_checksums`: epoch -> name -> checksum.

    Args:
        path: the checksum file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a checksum file.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "empty.json")
        >>> save_checksums(path, {})
        >>> load_checksums(path)
        {}
    """
    with open(path, encoding="utf-8") as f:
        try:
            payload = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"checksum file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a checksum file (expected format {FORMAT!r})")
    if payload.get("version", 0) > VERSION:
        raise ValueError(
            f"checksum file {str(path)!r} has version {payload['version']}; this reads <= {VERSION}"
        )
    return {int(e["epoch"]): dict(e["checksums"]) for e in payload["epochs"]}
