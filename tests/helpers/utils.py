"""State-comparison helpers for tests (and ``cpu_trainer``, from ``lightning_tricks.demos``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_tricks.demos import cpu_trainer

__all__ = ["cpu_trainer", "params_equal", "state_diff", "state_of", "whole_state"]


def state_of(module: nn.Module, params_only: bool = True) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's parameters (and buffers, unless ``params_only``)."""
    items = module.named_parameters() if params_only else module.state_dict().items()
    return {k: v.detach().cpu().clone() for k, v in items}


def params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors that differ (or are missing) between two state dicts; empty if equal."""
    diff = sorted(set(a) ^ set(b))
    diff += [k for k in sorted(set(a) & set(b)) if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    return diff


# --------------------------------------------------------------------------- whole state

Leaf = torch.Tensor | bool | int | float | str | None


def _flatten(obj: Any, prefix: str, out: dict[str, Leaf], roots: list[str]) -> None:
    if isinstance(obj, dict):
        if not obj:
            out[prefix] = "{}"
        for k, v in obj.items():
            _flatten(v, f"{prefix}/{k}", out, roots)
    elif isinstance(obj, list | tuple):
        if not obj:
            out[prefix] = "[]"
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}/{i}", out, roots)
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().cpu().clone()
    elif isinstance(obj, bool | int | float) or obj is None:
        out[prefix] = obj
    elif isinstance(obj, str | Path):
        s = str(obj)
        for root in roots:  # runs in different directories compare equal
            s = s.replace(root, "<root>")
        out[prefix] = s
    else:  # functions, enums, arbitrary objects: compared by type (and name where they have one)
        name = getattr(obj, "__qualname__", None) or getattr(obj, "name", None)
        out[prefix] = f"<{type(obj).__qualname__}{' ' + str(name) if name else ''}>"


def whole_state(
    trainer: L.Trainer,
    model: L.LightningModule | None = None,
    ignore_callbacks: Iterable[Any] = (),
) -> dict[str, Leaf]:
    """Everything a finished fit leaves behind that must survive a resume, flattened.

    Keys are ``/``-separated paths; values are CPU tensors or plain Python scalars and
    strings (so the result saves with ``torch.save`` and loads with ``weights_only=True``):

    * ``model/<name>``: every parameter and buffer (BatchNorm running stats,
      ``num_batches_tracked``);
    * ``optimizer<i>/state/...`` and ``optimizer<i>/param_groups/<g>/<key>``: every tensor
      and scalar of each optimizer's ``state_dict()`` (hyper-parameters such as ``lr``);
    * ``lr_scheduler<i>/...``: each LR scheduler's ``state_dict()``;
    * ``callback/<state_key>/...``: every callback's ``state_dict()``, except the
      ``ignore_callbacks`` instances (the harness's own checkpointing);
    * ``precision/...``: the precision plugin's state (the fp16 loss scaler), saved by
      Lightning in the checkpoint under the plugin's class name;
    * ``datamodule/...``: the datamodule's ``state_dict()``;
    * ``trainer/global_step``, ``trainer/current_epoch``, ``trainer/log_dir``.

    Strings that contain the run's ``default_root_dir`` are written relative to it, so
    that runs in different directories compare equal.
    """
    model = model if model is not None else trainer.lightning_module
    roots = sorted({str(trainer.default_root_dir), str(Path(trainer.default_root_dir).resolve())}, key=len)
    roots = roots[::-1]  # longest first
    out: dict[str, Leaf] = {}
    for k, v in model.state_dict().items():
        out[f"model/{k}"] = v.detach().cpu().clone()
    for i, opt in enumerate(trainer.optimizers):
        _flatten(opt.state_dict(), f"optimizer{i}", out, roots)
    for i, config in enumerate(trainer.lr_scheduler_configs):
        _flatten(config.scheduler.state_dict(), f"lr_scheduler{i}", out, roots)
    ignored = {id(c) for c in ignore_callbacks}
    for cb in trainer.callbacks:
        if id(cb) not in ignored:
            _flatten(cb.state_dict(), f"callback/{cb.state_key}", out, roots)
    _flatten(trainer.precision_plugin.state_dict(), "precision", out, roots)
    datamodule = trainer.datamodule
    if datamodule is not None:
        _flatten(datamodule.state_dict(), "datamodule", out, roots)
    out["trainer/global_step"] = trainer.global_step
    out["trainer/current_epoch"] = trainer.current_epoch
    _flatten(trainer.log_dir, "trainer/log_dir", out, roots)
    return out


def _same(a: Leaf, b: Leaf) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return torch.equal(a, b) or (a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, True).all()))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _show(v: Leaf) -> str:
    if isinstance(v, torch.Tensor):
        if v.numel() <= 4:
            return f"tensor({v.tolist()})"
        return f"tensor{tuple(v.shape)} sum={float(v.double().sum()):.6g}"
    return repr(v)


def state_diff(a: dict[str, Leaf], b: dict[str, Leaf]) -> list[str]:
    """The differing entries of two :func:`whole_state` results, one line each; empty if equal."""
    lines = [f"{k}: only in the first" for k in sorted(set(a) - set(b))]
    lines += [f"{k}: only in the second" for k in sorted(set(b) - set(a))]
    lines += [
        f"{k}: {_show(a[k])} != {_show(b[k])}" for k in sorted(set(a) & set(b)) if not _same(a[k], b[k])
    ]
    return lines
