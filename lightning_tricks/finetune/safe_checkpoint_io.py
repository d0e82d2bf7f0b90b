"""``SafeCheckpointIO``: a Lightning checkpoint plugin that never pickles.

Pair: [`SafeCheckpointIO`][lightning_tricks.SafeCheckpointIO] -> [`lightning_tricks.functional.finetune.safe_checkpoint_io.save_checkpoint`][lightning_tricks.functional.save_checkpoint]
/ ``load_checkpoint``. Run as a module to convert checkpoints you trust::

    python -m lightning_tricks.finetune.safe_checkpoint_io convert OLD.ckpt NEW.ckpt
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from lightning_tricks import _compat
from lightning_tricks.functional.finetune import safe_checkpoint_io as F

__all__ = ["SafeCheckpointIO", "load_from_checkpoint", "main"]

_T = TypeVar("_T")


class SafeCheckpointIO(CheckpointIO):
    """Write and read whole training checkpoints without pickle.

    Every tensor of the checkpoint (weights, buffers, optimizer state, callback tensors) goes
    into one safetensors file; everything else (epoch, step, loops, LR schedulers, callback
    states, hyper-parameters, the loss scaler, versions) into JSON in that file's metadata, with a
    small explicit set of encodings (tuples, sets, dtypes, devices, non-finite floats, ...). A value
    outside that set is refused at save time with its key path. Loading never unpickles: a pickled
    ``.ckpt`` is refused unless ``allow_pickle=True``. Local writes are atomic (temporary file,
    then rename); ``fsspec`` URLs work as with Lightning's ``TorchCheckpointIO``.

    ``ModelCheckpoint`` keeps naming the files ``*.ckpt``; their content is safetensors.
    ``LightningModule.load_from_checkpoint`` reads with ``torch.load`` and cannot read these files:
    use [`load_from_checkpoint`][lightning_tricks.finetune.safe_checkpoint_io.load_from_checkpoint] (``load_from_checkpoint(MyModel, path)``) instead.

    Args:
        allow_pickle: also load pickled ``torch.save`` checkpoints (e.g. to resume from a run
            written before switching). Unpickling can run arbitrary code: only for files you trust.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[SafeCheckpointIO()], logger=False, enable_progress_bar=False)
        >>> type(trainer.strategy.checkpoint_io).__name__
        'SafeCheckpointIO'
    """

    def __init__(self, allow_pickle: bool = False) -> None:
        if not isinstance(allow_pickle, bool):
            raise TypeError(f"`allow_pickle` must be a bool, got {allow_pickle!r}")
        self.allow_pickle = allow_pickle

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` (atomically for local paths).

        Raises:
            TypeError: ``storage_options`` is given, or a value cannot be stored without pickle
                (the message names its key path).
        """
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` is not supported by SafeCheckpointIO, got {storage_options!r}; allowed: None"
            )
        F.save_checkpoint(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path``. ``weights_only`` is accepted for Lightning's call and
        has nothing to restrict: nothing is unpickled.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            UnsafeCheckpointError: ``path`` is a pickled checkpoint and ``allow_pickle`` is False.
        """
        device = map_location if isinstance(map_location, str | torch.device) else None
        return F.load_checkpoint(path, map_location=device, allow_pickle=self.allow_pickle)

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint at ``path`` (one file)."""
        F.remove_checkpoint(path)


def load_from_checkpoint(
    cls: type[_T],
    checkpoint_path: str | os.PathLike[str],
    map_location: str | torch.device | None = None,
    strict: bool | None = None,
    *,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> _T:
    """``cls.load_from_checkpoint(checkpoint_path, ...)`` for checkpoints written by [`SafeCheckpointIO`][lightning_tricks.SafeCheckpointIO].

    Lightning's ``LightningModule.load_from_checkpoint`` reads the file with ``torch.load``
    (it does not go through the Trainer's checkpoint plugin), so it cannot read a safe checkpoint;
    this builds the module the same way (saved hyper-parameters overridden by ``kwargs``,
    ``on_load_checkpoint``, ``load_state_dict``) from a file read without pickle.

    Args:
        cls: a ``LightningModule`` or ``LightningDataModule`` subclass.
        checkpoint_path: path or ``fsspec`` URL of the checkpoint.
        map_location: device of the loaded weights (``None``: CPU).
        strict: passed to ``load_state_dict`` (``None``: the module's ``strict_loading``).
        allow_pickle: also read pickled checkpoints (only files you trust).
        **kwargs: override the saved hyper-parameters.

    Raises:
        UnsafeCheckpointError: the file is pickled and ``allow_pickle`` is False.

    Example:
        >>> import tempfile
        >>> import lightning as L
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> path = tempfile.mkdtemp() + "/model.ckpt"
        >>> trainer = L.Trainer(max_steps=1, plugins=[SafeCheckpointIO()], logger=False,
        ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(BoringModel())
        >>> trainer.save_checkpoint(path)
        >>> model = load_from_checkpoint(BoringModel, path)
        >>> type(model).__name__
        'BoringModel'
    """
    checkpoint = F.load_checkpoint(checkpoint_path, map_location=map_location, allow_pickle=allow_pickle)
    checkpoint.setdefault("hyper_parameters", {})
    checkpoint["hyper_parameters"].update(kwargs)
    obj = _compat.module_from_checkpoint(cls, checkpoint, strict=strict, **kwargs)
    if map_location is not None and isinstance(obj, torch.nn.Module):
        obj = obj.to(map_location)
    return cast(_T, obj)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lightning_tricks.finetune.safe_checkpoint_io convert SRC DST``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_tricks.finetune.safe_checkpoint_io",
        description="Pickle-free Lightning checkpoints (SafeCheckpointIO).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser(
        "convert",
        help="convert a pickled .ckpt you TRUST into the safe format (this unpickles SRC once)",
    )
    conv.add_argument("src", help="the pickled checkpoint (path or fsspec URL)")
    conv.add_argument("dst", help="where to write the safe checkpoint")
    check = sub.add_parser("check", help="say whether a file is a safe checkpoint (reads no pickle)")
    check.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "convert":
        try:
            F.convert_checkpoint(args.src, args.dst)
        except (TypeError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {args.dst}")
        return 0
    safe = F.is_safe_checkpoint(args.path)
    print(f"{args.path}: {'safe checkpoint' if safe else 'NOT a safe checkpoint'}")
    return 0 if safe else 1


if __name__ == "__main__":  # pragma: no cover - exercised through main()
    raise SystemExit(main())
