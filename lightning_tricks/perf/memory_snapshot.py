"""MemorySnapshot: CUDA allocator snapshots (or a CPU memory profile) of chosen training steps.

The Lightning layer of ``lightning_tricks.functional.perf.memory_snapshot``
([`MemoryWindow`][lightning_tricks.functional.MemoryWindow],
[`start_memory_recording`][lightning_tricks.functional.start_memory_recording],
[`dump_memory_snapshot`][lightning_tricks.functional.dump_memory_snapshot] and their CPU profiler
counterparts): the callback decides which steps are recorded, on which ranks, and where
the files go.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from lightning_tricks._compat import attach_cuda_oom_observer
from lightning_tricks._logging import component_dir
from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_int,
    check_optional_path,
)
from lightning_tricks.functional.perf import memory_snapshot as F
from lightning_tricks.functional.perf.memory_snapshot import StackContext, StackKind

__all__ = ["MemorySnapshot"]

Ranks = Literal["all", "zero"]


def _on_cuda(pl_module: L.LightningModule) -> bool:
    return pl_module.device.type == "cuda"


class MemorySnapshot(L.Callback):
    """Record the CUDA allocator history over windows of training steps and write it out;
    also on an exception or an out-of-memory error, so that a crash still leaves a snapshot.

    Each window writes ``memory_snapshot_rank{global_rank}_step{step}.pickle`` (drag it
    onto https://pytorch.org/memory_viz) and, with ``html``, the same with ``.html``:
    ``step`` is the last step the window covers. A failure, an OOM or the end of fit in
    the middle of a window writes what was recorded, with ``_exception`` / ``_oom``
    appended for the first two. On CPU, the same windows are recorded with the PyTorch
    profiler instead (``memory_profile_rank{r}_step{s}.txt`` with the operators that
    allocate most, plus ``.pickle``/``.html`` timelines), with one warning. A file that
    cannot be written gives a warning; training never stops because of this callback.

    Args:
        start_step: first recorded step (``trainer.global_step``); step 0 is often
            unrepresentative (lazy initialisation), hence the default 1.
        num_steps: steps per window.
        every_n_steps: repeat the window every this many steps; ``None`` for one window.
        ranks: ``"all"`` (one file per rank) or ``"zero"`` (global rank 0 only).
        max_entries: allocator events kept in the history ring buffer.
        stacks: ``"python"`` or ``"all"`` (adds C++ frames; slower).
        context: which stacks to keep: ``"state"``, ``"alloc"``, ``"all"`` or ``None``.
        dirpath: output folder; default ``<log_dir>/memory_snapshot/`` (``trainer.log_dir``,
            or ``default_root_dir`` without a logger).
        html: also write the HTML rendering.
        on_exception: write a snapshot when fit fails (on CUDA also at the OOM itself).

    Example:
        >>> import tempfile, warnings
        >>> from lightning_tricks.demos import ClassifierModule, ImageDataModule, cpu_trainer
        >>> cb = MemorySnapshot(start_step=1, num_steps=2, dirpath=tempfile.mkdtemp())
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     cpu_trainer(max_epochs=1, callbacks=[cb]).fit(ClassifierModule(), ImageDataModule())
        >>> sorted(p.name for p in cb.files)[-1]
        'memory_profile_rank0_step2.txt'
    """

    def __init__(
        self,
        start_step: int = 1,
        num_steps: int = 3,
        every_n_steps: int | None = None,
        ranks: Ranks = "all",
        max_entries: int = 100_000,
        stacks: StackKind = "python",
        context: StackContext | None = "all",
        dirpath: str | None = None,
        html: bool = True,
        on_exception: bool = True,
    ) -> None:
        super().__init__()
        self.window = F.MemoryWindow(start_step, num_steps, every_n_steps)
        self.ranks = check_choice("ranks", ranks, get_args(Ranks))
        self.max_entries = check_int("max_entries", max_entries, minimum=1)
        self.stacks = check_choice("stacks", stacks, F._STACKS)
        self.context = check_choice("context", context, F._CONTEXTS)
        self.dirpath = check_optional_path("dirpath", dirpath)
        self.html = check_bool("html", html)
        self.dump_on_exception = check_bool("on_exception", on_exception)
        self.files: list[Path] = []
        self._warned_cpu = False
        self._trainer: L.Trainer | None = None
        self._reset()

    def _reset(self) -> None:
        self._recording_from: int | None = None  # first step of the open window
        self._profiler: Any = None
        self._enabled = False
        self._cuda = False
        self._out = Path(".")
        self._rank = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_profiler"] = None  # a running profiler is not picklable
        return state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self.files = []
        self._rank = trainer.global_rank
        self._enabled = self.ranks == "all" or trainer.global_rank == 0
        self._cuda = _on_cuda(pl_module)
        self._out = component_dir(trainer, self, self.dirpath)
        if not self._cuda and not self._warned_cpu:
            self._warned_cpu = True
            rank_zero_warn(
                "MemorySnapshot: CUDA memory snapshots need a GPU; on this device the same steps "
                "are recorded as a CPU memory profile with the PyTorch profiler instead."
            )
        if self._cuda and self._enabled and self.dump_on_exception and not getattr(self, "_observing", False):
            attach_cuda_oom_observer(self._on_oom)
            self._observing = True  # the observer cannot be detached: it checks `_enabled`

    def _name(self, step: int, suffix: str = "") -> Path:
        kind = "memory_snapshot" if self._cuda else "memory_profile"
        return self._out / f"{kind}_rank{self._rank}_step{step}{suffix}"

    def _start(self, step: int) -> None:
        try:
            if self._cuda:
                F.start_memory_recording(self.max_entries, self.stacks, self.context)
            else:
                self._profiler = F.start_cpu_memory_profile()
            self._recording_from = step
        except Exception as err:
            warnings.warn(f"MemorySnapshot could not start recording at step {step}: {err!r}")

    def _finish(self, step: int, suffix: str = "") -> None:
        """Write what the open window (or, on CUDA, the allocator) holds, then stop recording."""
        try:
            if self._cuda:
                path = self._name(step, suffix)
                self.files += F.dump_memory_snapshot(path.with_name(path.name + ".pickle"), self.html)
            elif self._profiler is not None:
                prof, self._profiler = self._profiler, None
                prof.stop()
                self.files += F.dump_cpu_memory_profile(prof, self._name(step, suffix), self.html)
        except Exception as err:
            warnings.warn(f"MemorySnapshot could not write the snapshot of step {step}: {err!r}")
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._cuda and self._recording_from is not None:
            try:
                F.stop_memory_recording()
            except Exception as err:
                warnings.warn(f"MemorySnapshot could not stop recording: {err!r}")
        elif self._profiler is not None:
            with contextlib.suppress(Exception):  # already stopped
                self._profiler.stop()
        self._profiler = None
        self._recording_from = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._enabled and self._recording_from is None and self.window.starts_at(step):
            self._start(step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        start = self._recording_from
        if start is not None and trainer.global_step >= start + self.window.num_steps:
            self._finish(trainer.global_step - 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._recording_from is not None:  # fit stopped inside a window
            self._finish(max(self._recording_from, trainer.global_step - 1))

    def _on_oom(self, device: int, alloc: int, device_alloc: int, device_free: int) -> None:
        if self._enabled and self._cuda and self.dump_on_exception:
            self._finish(self._step_now, "_oom")
            self._oom_dumped = True

    @property
    def _step_now(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return trainer.global_step if trainer is not None else 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        self._oom_dumped = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not self._enabled:
            return
        recorded = self._cuda or self._profiler is not None
        if self.dump_on_exception and recorded and not getattr(self, "_oom_dumped", False):
            self._finish(trainer.global_step, "_exception")
        self._stop()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._stop()
            self._enabled = False
            self._trainer = None
