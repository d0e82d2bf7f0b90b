"""Every private Lightning and torch API that lightning-tricks uses, in one place.

Nothing else in the package touches an underscore attribute of Lightning or torch: it
calls a function here. ``tests/test_compat.py`` checks each internal against the
installed versions, so an upgrade that moves one fails that test by name instead of
breaking a component at run time. Lightning is imported inside the functions, so the
functional core (which must import without Lightning) may use the torch helpers.

The floors in ``pyproject.toml`` are the oldest versions these calls were checked on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "CUDA_INTERNALS",
    "INTERNALS",
    "attach_cuda_oom_observer",
    "compile_event_handler",
    "configure_optimizers_outputs",
    "cpu_profile_to_snapshot",
    "cuda_memory_snapshot",
    "drop_undecodable_profiler_events",
    "dynamo_backends",
    "fit_data_source",
    "module_from_checkpoint",
    "foreach_mul_",
    "forget_step_values",
    "foreach_norm",
    "norm_base_class",
    "op_overload_type",
    "version_sharing_detach_guard",
    "memory_viz_html",
    "record_cuda_memory_history",
    "recreate_train_iterator",
    "rewrap_ddp_model",
    "should_update_logs",
    "training_batches_completed",
]

# --------------------------------------------------------------------------- torch


def foreach_norm(tensors: Sequence[torch.Tensor], norm_type: float = 2.0) -> list[torch.Tensor]:
    """One norm per tensor, in as few kernels as the device allows (``torch._foreach_norm``)."""
    return list(torch._foreach_norm(list(tensors), norm_type))


def foreach_mul_(tensors: Sequence[torch.Tensor], scalar: torch.Tensor | float) -> None:
    """Multiply every tensor in place by one scalar (``torch._foreach_mul_``)."""
    torch._foreach_mul_(list(tensors), scalar)


def norm_base_class() -> type[torch.nn.Module]:
    """The base class of every batch and instance norm layer (BatchNorm*, SyncBatchNorm,
    LazyBatchNorm*, InstanceNorm*): ``torch.nn.modules.batchnorm._NormBase``."""
    from torch.nn.modules.batchnorm import _NormBase

    return _NormBase


def op_overload_type() -> Any:
    """The class of ``torch.ops.aten.<op>.<overload>`` objects (``torch._ops.OpOverload``);
    an instance's ``_op`` is the C++ op its ``__call__`` forwards to."""
    from torch._ops import OpOverload

    return OpOverload


def version_sharing_detach_guard() -> Callable[[], Any] | None:
    """A context factory under which ``Tensor.detach()`` called inside a dispatch mode (below
    autograd) shares the version counter of its source, as it does above autograd
    (``torch._C._SetExcludeDispatchKeyGuard(DispatchKey.ADInplaceOrView, False)``, what
    ``torch.utils.checkpoint``'s selective mode uses); ``None`` where this torch lacks it."""
    guard = getattr(torch._C, "_SetExcludeDispatchKeyGuard", None)
    key = getattr(getattr(torch._C, "DispatchKey", None), "ADInplaceOrView", None)
    if guard is None or key is None:  # pragma: no cover - older or newer torch
        return None
    return functools.partial(guard, key, False)


def dynamo_backends() -> list[str]:
    """The names ``torch.compile(backend=...)`` accepts (``torch._dynamo.list_backends``)."""
    import torch._dynamo

    return list(torch._dynamo.list_backends(exclude_tags=()))


def compile_event_handler() -> Any:
    """Dynamo's compile start/end callback registry, or ``None`` where this torch has none."""
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:  # pragma: no cover - older or newer torch
        return None
    return callback_handler


def record_cuda_memory_history(**kwargs: Any) -> None:
    """``torch.cuda.memory._record_memory_history``: start (or, ``enabled=None``, stop) recording."""
    torch.cuda.memory._record_memory_history(**kwargs)


def cuda_memory_snapshot() -> Any:
    """``torch.cuda.memory._snapshot()``: the allocator state and recorded history."""
    return torch.cuda.memory._snapshot()


def attach_cuda_oom_observer(observer: Callable[..., None]) -> None:
    """Call ``observer(device, alloc, device_alloc, device_free)`` on every CUDA out-of-memory
    error (``torch._C._cuda_attach_out_of_memory_observer``); it cannot be detached."""
    torch._C._cuda_attach_out_of_memory_observer(observer)  # type: ignore[attr-defined]  # CUDA builds only


def cpu_profile_to_snapshot(prof: Any) -> Any:
    """Convert a profiler run with ``profile_memory=True`` to the memory-viz snapshot format."""
    from torch.cuda import _memory_viz

    return _memory_viz._profile_to_snapshot(prof)


def memory_viz_html(snapshot: Any) -> str:
    """A self-contained HTML page showing a memory snapshot (``torch.cuda._memory_viz.trace_plot``)."""
    from torch.cuda import _memory_viz

    return str(_memory_viz.trace_plot(snapshot))


class _DecodableEvents:
    """A profiler result whose ``events()`` leaves out the given undecodable events."""

    def __init__(self, result: Any, events: list[Any]) -> None:
        self._result, self._events = result, events

    def events(self) -> list[Any]:
        return self._events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)


def drop_undecodable_profiler_events(prof: Any) -> int:
    """Drop the events of a stopped profiler whose names are not valid UTF-8 and return how
    many were dropped.

    With ``with_stack=True`` torch can record Python frames whose names it cannot decode
    (seen on frames inside PIL while TensorBoard writes an image); every later
    ``key_averages()`` then fails with ``UnicodeDecodeError``. Without those frames the
    memory events and operators parse as usual. Works on the profiler's private
    ``kineto_results`` and cached ``_function_events``.
    """
    inner = prof.profiler
    result = inner.kineto_results
    kept: list[Any] = []
    dropped = 0
    for event in result.events():
        try:
            event.name()
        except UnicodeDecodeError:
            dropped += 1
        else:
            kept.append(event)
    inner.kineto_results = _DecodableEvents(result, kept)
    inner._function_events = None
    return dropped


# --------------------------------------------------------------------------- Lightning


def configure_optimizers_outputs(conf: Any) -> tuple[list[Any], list[Any], str | None]:
    """Normalise whatever ``configure_optimizers`` returned into (optimizers, schedulers or
    scheduler configs, the monitor name), as Lightning does (``lightning.pytorch.core.optimizer._configure_optimizers``)."""
    from lightning.pytorch.core.optimizer import _configure_optimizers

    return _configure_optimizers(conf)


def should_update_logs(trainer: Any) -> bool:
    """Whether this training step is one that logs (``log_every_n_steps``), as Lightning decides it."""
    return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)


def fit_data_source(trainer: Any) -> Any:
    """The fit loop's training-data source (``trainer.fit_loop._data_source``): has
    ``is_defined()`` and ``dataloader()``."""
    return trainer.fit_loop._data_source


def forget_step_values(trainer: Any, prefix: str) -> None:
    """Stop Lightning from sending again, on its later logging steps of the epoch, the step
    values logged under keys that start with ``prefix`` (``trainer._results``: a value
    logged with ``on_step=True`` stays in the result collection until the epoch ends, and
    every logging step sends it again, labelled with that later step)."""
    results = trainer._results
    if results is None:
        return
    for metric in results.values():
        meta = getattr(metric, "meta", None)
        if meta is not None and str(meta.name).startswith(prefix) and not metric.has_reset:
            metric.reset()


def training_batches_completed(trainer: Any) -> int:
    """Training batches completed in the current epoch (the fit loop's batch progress)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)


def rewrap_ddp_model(strategy: Any) -> None:
    """Wrap the strategy's module in a new ``DistributedDataParallel`` (so that parameters
    unfrozen since the last wrap get their gradients all-reduced) and re-register the
    strategy's communication hooks (``DDPStrategy._setup_model``/``_register_ddp_hooks``)."""
    strategy.model = strategy._setup_model(strategy.model.module)
    strategy._register_ddp_hooks()


def module_from_checkpoint(
    cls: Any, checkpoint: dict[str, Any], strict: bool | None = None, **kwargs: Any
) -> Any:
    """Build ``cls`` (a LightningModule or LightningDataModule class) from an already loaded
    checkpoint dict, as ``cls.load_from_checkpoint`` does after its ``torch.load``: legacy
    migration (``_pl_migrate_checkpoint``), then ``lightning.pytorch.core.saving._load_state``
    (hyper-parameters, ``on_load_checkpoint``, ``load_state_dict``)."""
    from lightning.pytorch import LightningModule
    from lightning.pytorch.core.saving import _load_state
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    checkpoint = _pl_migrate_checkpoint(checkpoint)
    if issubclass(cls, LightningModule):
        return _load_state(cls, checkpoint, strict=strict, **kwargs)
    return _load_state(cls, checkpoint, **kwargs)


def recreate_train_iterator(trainer: Any) -> bool:
    """Create the fit loop's training-data iterator again, now, when the epoch about to run
    would reuse the one made before the epoch's hooks (``_FitLoop.setup_data`` makes it on
    a (re)started fit, before the samplers' ``set_epoch`` and ``on_train_epoch_start``; the
    epoch loop only makes a new one when ``current_epoch > 0`` and the fit is not resuming).
    Returns whether it did."""
    fit_loop = trainer.fit_loop
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if fetcher is None or getattr(fetcher, "_combined_loader", None) is None:
        return False
    epoch_loop = fit_loop.epoch_loop
    if trainer.current_epoch > 0 and not fit_loop.is_resuming and not epoch_loop.restarting:
        return False  # the epoch loop makes it when the epoch starts
    iter(fetcher)
    return True


# What each helper relies on: (importable path, attribute chain). Checked by tests/test_compat.py.
INTERNALS: dict[str, tuple[str, str]] = {
    "foreach_norm": ("torch", "_foreach_norm"),
    "foreach_mul_": ("torch", "_foreach_mul_"),
    "norm_base_class": ("torch.nn.modules.batchnorm", "_NormBase"),
    "dynamo_backends": ("torch._dynamo", "list_backends"),
    "op_overload_type": ("torch._ops", "OpOverload"),
    "version_sharing_detach_guard": ("torch._C", "_SetExcludeDispatchKeyGuard"),
    "compile_event_handler": ("torch._dynamo.callback", "callback_handler.register_start_callback"),
    "record_cuda_memory_history": ("torch.cuda.memory", "_record_memory_history"),
    "cuda_memory_snapshot": ("torch.cuda.memory", "_snapshot"),
    "attach_cuda_oom_observer": ("torch._C", "_cuda_attach_out_of_memory_observer"),
    "cpu_profile_to_snapshot": ("torch.cuda._memory_viz", "_profile_to_snapshot"),
    "memory_viz_html": ("torch.cuda._memory_viz", "trace_plot"),
    "drop_undecodable_profiler_events": ("torch.autograd.profiler", "profile._parse_kineto_results"),
    "configure_optimizers_outputs": ("lightning.pytorch.core.optimizer", "_configure_optimizers"),
    "should_update_logs": (
        "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
        "_LoggerConnector.should_update_logs",
    ),
    "fit_data_source": ("lightning.pytorch.loops.fit_loop", "_FitLoop.__init__"),
    "forget_step_values": ("lightning.pytorch.trainer.trainer", "Trainer._results"),
    "training_batches_completed": (
        "lightning.pytorch.loops.training_epoch_loop",
        "_TrainingEpochLoop.__init__",
    ),
    "module_from_checkpoint": ("lightning.pytorch.core.saving", "_load_state"),
    "rewrap_ddp_model": ("lightning.pytorch.strategies.ddp", "DDPStrategy._setup_model"),
    "recreate_train_iterator": ("lightning.pytorch.loops.fit_loop", "_FitLoop.is_resuming"),
}

# Internals that only CUDA builds of torch have.
CUDA_INTERNALS = frozenset({"attach_cuda_oom_observer"})
