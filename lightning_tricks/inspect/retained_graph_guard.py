"""RetainedGraphGuard: catch tensors that keep an autograd graph alive across training steps."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks.functional._checks import OnError, check_int, check_on_error, report_problem
from lightning_tricks.functional.inspect.retained_graph_guard import RetainedGraph, find_retained_graphs

__all__ = ["RetainedGraphError", "RetainedGraphGuard"]


class RetainedGraphError(RuntimeError):
    """Raised by [`RetainedGraphGuard`][lightning_tricks.RetainedGraphGuard] with ``on_error="raise"``.

    Example:
        >>> isinstance(RetainedGraphError("x"), RuntimeError)
        True
    """


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**16 else f"{n} bytes"


def describe(found: RetainedGraph) -> str:
    """The message for one finding.

    Example:
        >>> describe(RetainedGraph("self.losses", 3, 12, 4096)).split(":")[0]
        'RetainedGraphGuard'
    """
    return (
        f"RetainedGraphGuard: `{found.path}` holds {found.num_tensors} tensor(s) that still carry an "
        f"autograd graph between training steps ({found.num_nodes} graph nodes, {_mib(found.saved_bytes)} "
        f"of tensors kept alive). Memory grows every step this is kept; store `tensor.detach()` "
        f"(e.g. `self.losses.append(loss.detach())`) instead."
    )


class RetainedGraphGuard(Callback):
    """Warn (or raise) when the LightningModule keeps a tensor's autograd graph alive across steps.

    At the start of the first training batch after the fit starts (or resumes: at the
    very first batch nothing can be retained yet), then every ``every_n_steps`` optimizer
    steps after it, and at the end of every training epoch (before the module's own
    ``on_train_epoch_end``), the module's attributes (and its submodules', not parameters
    or buffers), including nested lists, tuples and dicts, are scanned for tensors with a ``grad_fn``: at that
    point none should exist. The classic case is ``self.losses.append(loss)``. The
    message names the attribute and estimates the memory it holds. Each attribute is
    reported once per fit. The scan is pure Python (no device sync) and bounded. Every
    finding of the current fit is kept in `found`, whatever ``on_error`` says.

    Args:
        every_n_steps: scan every N steps after the first scan (which is one step after the start).
        on_error: ``"warn"`` (the default), ``"raise"`` ([`RetainedGraphError`][lightning_tricks.RetainedGraphError]) or
            ``"ignore"`` (only record the finding in `found`).
        max_depth: container nesting levels to look into.

    Raises:
        ValueError: for an ``on_error`` other than ``"warn"``, ``"raise"``, ``"ignore"``.

    Example:
        >>> from lightning_tricks import RetainedGraphGuard
        >>> RetainedGraphGuard(every_n_steps=10, on_error="raise").on_error
        'raise'
    """

    def __init__(self, every_n_steps: int = 50, on_error: OnError = "warn", max_depth: int = 3) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        self.on_error = check_on_error(on_error)
        self.max_depth = check_int("max_depth", max_depth, minimum=0, maximum=20)
        self.found: list[RetainedGraph] = []
        self._reported: set[str] = set()
        self._start = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reported = set()
        self.found = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = trainer.global_step  # 0, or the step a resumed run starts from

    def _due(self, step: int) -> bool:
        # nothing can be retained before the first step has run: the first scan is one step
        # after the start, then every N steps after that one
        start = getattr(self, "_start", 0)
        return step > start and (step - start - 1) % self.every_n_steps == 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        if self._due(trainer.global_step):
            self._scan(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._scan(trainer, pl_module)  # before the module's own `on_train_epoch_end` clears its lists

    def _scan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for found in find_retained_graphs(pl_module, max_depth=self.max_depth):
            if found.path in self._reported:
                continue
            self._reported.add(found.path)
            self.found.append(found)
            if self.on_error == "warn":
                rank_zero_warn(describe(found))
            else:
                report_problem(self.on_error, describe(found), RetainedGraphError)
