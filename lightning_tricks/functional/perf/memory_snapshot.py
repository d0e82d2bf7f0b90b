"""Memory snapshots: CUDA allocator history (``torch.cuda.memory``) or a CPU memory profile.

On CUDA, [`start_memory_recording`][lightning_tricks.functional.start_memory_recording] turns on the caching allocator's history and
[`dump_memory_snapshot`][lightning_tricks.functional.dump_memory_snapshot] writes it as a pickle (drag it onto
https://pytorch.org/memory_viz) and as an HTML page with the snapshot embedded. On CPU,
[`start_cpu_memory_profile`][lightning_tricks.functional.start_cpu_memory_profile] / [`dump_cpu_memory_profile`][lightning_tricks.functional.dump_cpu_memory_profile] record the same
window with the PyTorch profiler. [`MemoryWindow`][lightning_tricks.functional.MemoryWindow] decides which steps are recorded.

The functional core of [`MemorySnapshot`][lightning_tricks.MemorySnapshot], which opens and closes
the windows during training and writes the files.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch.profiler import ProfilerActivity, profile

from lightning_tricks._compat import (
    cpu_profile_to_snapshot,
    cuda_memory_snapshot,
    drop_undecodable_profiler_events,
    memory_viz_html,
    record_cuda_memory_history,
)
from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_path,
    describe,
)
from lightning_tricks.functional._io import atomic_write_bytes, atomic_write_text

__all__ = [
    "MemoryWindow",
    "dump_cpu_memory_profile",
    "dump_memory_snapshot",
    "start_cpu_memory_profile",
    "start_memory_recording",
    "stop_memory_recording",
]

StackKind = Literal["python", "all"]
"""Which stack frames the allocator history records."""
StackContext = Literal["state", "alloc", "all"]
"""Which events keep their stacks (``None``: none)."""
_STACKS: tuple[str, ...] = get_args(StackKind)
_CONTEXTS: tuple[str | None, ...] = (*get_args(StackContext), None)


@dataclass(frozen=True)
class MemoryWindow:
    """Which training steps to record: ``num_steps`` steps from ``start_step``, repeated
    every ``every_n_steps`` steps if given.

    Args:
        start_step: first recorded step.
        num_steps: steps per window.
        every_n_steps: distance between window starts; ``None`` for one window.

    Raises:
        ValueError: if ``every_n_steps < num_steps`` (windows would overlap).

    Example:
        >>> w = MemoryWindow(start_step=2, num_steps=2, every_n_steps=10)
        >>> [s for s in range(25) if w.starts_at(s)], [s for s in range(25) if w.contains(s)]
        ([2, 12, 22], [2, 3, 12, 13, 22, 23])
    """

    start_step: int = 1
    num_steps: int = 3
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        check_int("start_step", self.start_step, minimum=0)
        check_int("num_steps", self.num_steps, minimum=1)
        check_optional_int("every_n_steps", self.every_n_steps, minimum=1)
        if self.every_n_steps is not None and self.every_n_steps < self.num_steps:
            raise ValueError(
                f"`every_n_steps` must be >= `num_steps` ({self.num_steps}) so that windows do not "
                f"overlap; got {self.every_n_steps}"
            )

    def window_of(self, step: int) -> int | None:
        """First step of the window that contains ``step``, or ``None``."""
        step = check_int("step", step)
        if step < self.start_step:
            return None
        offset = step - self.start_step
        if self.every_n_steps is not None:
            offset %= self.every_n_steps
        return step - offset if offset < self.num_steps else None

    def contains(self, step: int) -> bool:
        """Whether ``step`` is recorded."""
        return self.window_of(step) is not None

    def starts_at(self, step: int) -> bool:
        """Whether a window begins at ``step``."""
        return self.window_of(step) == step


def start_memory_recording(
    max_entries: int = 100_000, stacks: StackKind = "python", context: StackContext | None = "all"
) -> None:
    """Turn on the CUDA caching allocator's history (``torch.cuda.memory._record_memory_history``,
    through ``lightning_tricks._compat``).

    Args:
        max_entries: alloc/free events kept (a ring buffer; several KB each).
        stacks: ``"python"`` or ``"all"`` (adds C++ frames, slower).
        context: which stacks to keep: ``"state"`` (live blocks), ``"alloc"``, ``"all"``
            (also frees) or ``None`` (no stacks).

    Raises:
        RuntimeError: without CUDA.

    Example:
        >>> if torch.cuda.is_available():
        ...     start_memory_recording(max_entries=10_000)
        ...     stop_memory_recording()
    """
    check_int("max_entries", max_entries, minimum=1)
    check_choice("stacks", stacks, _STACKS)
    check_choice("context", context, _CONTEXTS)
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA memory recording needs a CUDA device; use start_cpu_memory_profile on CPU")
    record_cuda_memory_history(enabled="all", context=context, stacks=stacks, max_entries=max_entries)


def stop_memory_recording() -> None:
    """Turn the CUDA allocator history off (no-op without CUDA).

    Example:
        >>> stop_memory_recording()
    """
    if torch.cuda.is_available():
        record_cuda_memory_history(enabled=None)


def dump_memory_snapshot(path: str | Path, html: bool = True) -> list[Path]:
    """Write the CUDA allocator snapshot to ``path`` (pickle), and ``path`` with ``.html``.

    Both files are written atomically. The HTML page embeds the snapshot (made offline);
    opening it loads PyTorch's MemoryViz viewer script from its CDN.

    Args:
        path: the ``.pickle`` file.
        html: also write the HTML rendering (PyTorch's memory-viz page).

    Returns:
        The files written.

    Raises:
        TypeError: ``path`` is not a path (``str`` or ``os.PathLike``) or ``html`` not a bool.
        RuntimeError: without CUDA.

    Example:
        >>> import tempfile
        >>> if torch.cuda.is_available():
        ...     files = dump_memory_snapshot(tempfile.mkdtemp() + "/snap.pickle")
    """
    path = Path(check_path("path", path))
    check_bool("html", html)
    if not torch.cuda.is_available():
        raise RuntimeError(
            "dump_memory_snapshot needs CUDA (it dumps the CUDA caching allocator); on CPU record "
            "with start_cpu_memory_profile() and write with dump_cpu_memory_profile()"
        )
    snapshot = cuda_memory_snapshot()
    files = [atomic_write_bytes(path, pickle.dumps(snapshot))]
    if html:
        files.append(atomic_write_text(path.with_suffix(".html"), memory_viz_html(snapshot)))
    return files


def start_cpu_memory_profile() -> profile:
    """Start and return a CPU profiler that records memory (allocations, shapes, stacks).

    Example:
        >>> prof = start_cpu_memory_profile()
        >>> x = torch.ones(256, 256) @ torch.ones(256, 256)
        >>> prof.stop()
    """
    prof = profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    )
    prof.start()
    return prof


def dump_cpu_memory_profile(
    prof: profile, path: str | Path, html: bool = True, row_limit: int = 30
) -> list[Path]:
    """Write a stopped profiler's memory profile: a table of the operators that allocate
    the most (``.txt``), a snapshot-like pickle of its allocations (``.pickle``, viewable
    at https://pytorch.org/memory_viz) and the same as an HTML timeline (``.html``).

    Args:
        prof: a profiler from [`start_cpu_memory_profile`][lightning_tricks.functional.start_cpu_memory_profile], stopped.
        path: file path without a suffix, e.g. ``out/memory_profile_rank0_step3``.
        html: also write the HTML timeline.
        row_limit: rows of the table.

    Returns:
        The files written (the pickle and HTML are skipped, with a warning, if this
        PyTorch cannot convert the profile).

    Raises:
        TypeError: ``prof`` is not a profiler, ``path`` not a path, or a bad argument type.
        ValueError: ``row_limit`` < 1, or ``path`` without a file name.

    Example:
        >>> import tempfile
        >>> prof = start_cpu_memory_profile()
        >>> y = torch.randn(64, 64).relu().sum()
        >>> prof.stop()
        >>> " ".join(p.suffix for p in dump_cpu_memory_profile(prof, tempfile.mkdtemp() + "/mem"))
        '.txt .pickle .html'
    """
    if not isinstance(prof, profile):
        raise TypeError(f"`prof` must be a profiler from start_cpu_memory_profile(); got {describe(prof)}")
    path = Path(check_path("path", path))
    if not path.name:
        raise ValueError(f"`path` must end in a file name (the suffixes are added); got {str(path)!r}")
    check_bool("html", html)
    check_int("row_limit", row_limit, minimum=1)
    try:
        averages = prof.key_averages()
    except UnicodeDecodeError:  # frames torch recorded but cannot decode: keep everything else
        dropped = drop_undecodable_profiler_events(prof)
        warnings.warn(
            f"the CPU memory profile held {dropped} stack frame(s) that could not be decoded; "
            "they were left out and the profile was written without them"
        )
        averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_memory_usage", row_limit=row_limit)
    files = [atomic_write_text(path.with_name(path.name + ".txt"), table)]
    try:
        snapshot = cpu_profile_to_snapshot(prof)
        files.append(atomic_write_bytes(path.with_name(path.name + ".pickle"), pickle.dumps(snapshot)))
        if html:
            page = memory_viz_html(snapshot)
            files.append(atomic_write_text(path.with_name(path.name + ".html"), page))
    except Exception as err:  # a private converter: never lose the table because of it
        warnings.warn(f"could not convert the CPU memory profile to a snapshot: {err!r}")
    return files
