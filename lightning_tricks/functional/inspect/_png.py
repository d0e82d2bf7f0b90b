"""A minimal PNG encoder (zlib only), so that images can be written without matplotlib/PIL."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import torch

from lightning_tricks.functional._io import atomic_write_bytes

__all__ = ["encode_png", "to_uint8_image", "write_png"]


def to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """Convert an image tensor to ``uint8`` of shape ``(H, W)`` or ``(H, W, 3)``.

    Accepts ``(H, W)``, ``(1, H, W)``, ``(3, H, W)`` (channels first, as TensorBoard
    takes them) or ``(H, W, 3)``; float images are taken to lie in ``[0, 1]`` and are
    clamped.

    Args:
        image: the image.

    Returns:
        A contiguous CPU ``uint8`` tensor.

    Raises:
        ValueError: if the shape is not one of the above.

    Example:
        >>> to_uint8_image(torch.ones(3, 2, 4)).shape
        torch.Size([2, 4, 3])
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`image` must be a torch.Tensor; got {type(image).__name__}")
    img = image.detach().cpu()
    if img.dim() == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.permute(1, 2, 0)
    if img.dim() == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dim() not in (2, 3) or (img.dim() == 3 and img.shape[-1] != 3) or img.numel() == 0:
        raise ValueError(
            f"`image` must have shape (H, W), (1|3, H, W) or (H, W, 3); got {tuple(image.shape)}"
        )
    if img.dtype != torch.uint8:
        img = (img.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
    return img.contiguous()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(image: torch.Tensor) -> bytes:
    """Encode an image (see `to_uint8_image` for the accepted shapes) as PNG bytes.

    Args:
        image: grayscale or RGB image.

    Returns:
        The PNG file contents (8-bit grayscale or RGB, no filtering).

    Example:
        >>> encode_png(torch.zeros(4, 4))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    img = to_uint8_image(image)
    height, width = img.shape[0], img.shape[1]
    color_type = 2 if img.dim() == 3 else 0
    rows = img.reshape(height, -1)
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1).numpy().tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], image: torch.Tensor) -> Path:
    """Atomically write ``image`` to ``path`` as a PNG file.

    Args:
        path: destination file.
        image: grayscale or RGB image (see `to_uint8_image`).

    Returns:
        The path written.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_png(pathlib.Path(tempfile.mkdtemp()) / "a.png", torch.rand(3, 5, 7))
        >>> p.read_bytes()[1:4]
        b'PNG'
    """
    return atomic_write_bytes(path, encode_png(image))
