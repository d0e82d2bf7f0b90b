"""The GPU trainer preset: mixed precision, DDP, cuDNN autotuning; a clear CPU fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_tricks.functional._checks import check_bool

__all__ = ["CPU_FALLBACK", "GPU_CONFIG", "gpu_trainer", "gpu_trainer_kwargs"]

#: The LightningCLI config file with the preset (``--config`` it).
GPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "gpu.yaml"

#: What changes on a machine without CUDA (fp16 autocast is GPU-only; bf16 works on CPU).
CPU_FALLBACK: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "precision": "bf16-mixed",
    "benchmark": False,
}


def gpu_trainer_kwargs(find_unused_parameters: bool = False, **overrides: Any) -> dict[str, Any]:
    """The ``Trainer`` arguments of the GPU preset, with ``overrides`` applied.

    The preset is read from [`GPU_CONFIG`][lightning_tricks.perf.gpu_trainer.GPU_CONFIG] (the LightningCLI config file), so the
    function and the config cannot drift apart: ``precision="16-mixed"``,
    ``strategy="ddp"`` (with ``find_unused_parameters`` only when asked, since the
    search costs a graph traversal every step), ``devices="auto"`` and ``benchmark=True``
    (cuDNN picks the fastest convolution algorithms) unless ``deterministic=True``.
    Without CUDA it falls back to [`CPU_FALLBACK`][lightning_tricks.perf.gpu_trainer.CPU_FALLBACK] (one CPU process in
    ``bf16-mixed``) and warns once; explicit overrides always win.

    Args:
        find_unused_parameters: let DDP find parameters that get no gradient in a step
            (needed for models with branches that are skipped; slower otherwise).
        **overrides: any ``lightning.Trainer`` argument.

    Returns:
        A dict for ``lightning.Trainer(**kwargs)``.

    Raises:
        TypeError: if ``find_unused_parameters`` is not a bool.

    Example:
        >>> kwargs = gpu_trainer_kwargs(accelerator="cpu", strategy="auto", precision="bf16-mixed")
        >>> kwargs["benchmark"], gpu_trainer_kwargs(deterministic=True)["benchmark"]
        (True, False)
    """
    check_bool("find_unused_parameters", find_unused_parameters)
    kwargs: dict[str, Any] = dict(yaml.safe_load(GPU_CONFIG.read_text())["trainer"])
    if find_unused_parameters:
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
    wants_gpu = overrides.get("accelerator", kwargs["accelerator"]) in ("gpu", "cuda", "auto")
    if not torch.cuda.is_available() and wants_gpu:
        fallback = {k: v for k, v in CPU_FALLBACK.items() if k not in overrides}
        rank_zero_warn(
            "gpu_trainer: no CUDA device, falling back to "
            + ", ".join(f"{k}={v!r}" for k, v in fallback.items())
            + " (fp16 autocast needs a GPU; bf16 works on CPU)."
        )
        kwargs.update(fallback)
    kwargs.update(overrides)
    if kwargs.get("deterministic") and "benchmark" not in overrides:
        kwargs["benchmark"] = False
    return kwargs


def gpu_trainer(find_unused_parameters: bool = False, **overrides: Any) -> L.Trainer:
    """A ``lightning.Trainer`` with the GPU preset of [`gpu_trainer_kwargs`][lightning_tricks.gpu_trainer_kwargs].

    This is the configuration every lightning-tricks callback is built and tested for:
    ``precision="16-mixed"``, ``strategy="ddp"``, ``benchmark=True`` unless
    deterministic. On a machine without CUDA it warns and runs on one CPU in
    ``bf16-mixed``.

    Args:
        find_unused_parameters: see [`gpu_trainer_kwargs`][lightning_tricks.gpu_trainer_kwargs].
        **overrides: any ``lightning.Trainer`` argument.

    Returns:
        The trainer.

    Raises:
        TypeError: if ``find_unused_parameters`` is not a bool.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     trainer = gpu_trainer(max_epochs=1, logger=False, enable_checkpointing=False)
        >>> trainer.max_epochs
        1
    """
    return L.Trainer(**gpu_trainer_kwargs(find_unused_parameters, **overrides))
