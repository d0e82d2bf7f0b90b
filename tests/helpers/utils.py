"""Trainer and weight-comparison helpers for tests."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


def cpu_trainer(**overrides: Any) -> L.Trainer:
    """A quiet, deterministic CPU Trainer: 2 epochs, no logger or checkpoints unless asked."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def state_of(module: nn.Module, params_only: bool = True) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's parameters (and buffers, unless ``params_only``)."""
    items = module.named_parameters() if params_only else module.state_dict().items()
    return {k: v.detach().cpu().clone() for k, v in items}


def params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors that differ (or are missing) between two state dicts; empty if equal."""
    diff = sorted(set(a) ^ set(b))
    diff += [k for k in sorted(set(a) & set(b)) if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    return diff
