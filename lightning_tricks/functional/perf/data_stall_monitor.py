"""How much of each training step is spent waiting for data, and what to change about it.

The functional core of [`DataStallMonitor`][lightning_tricks.DataStallMonitor]: a
[`DataStallTimer`][lightning_tricks.functional.DataStallTimer] measures, with ``time.perf_counter()`` only, the wait from the end
of one step to the start of the next (loading, collating and moving the batch) and the
step itself, over a window of recent steps; [`data_stall_advice`][lightning_tricks.functional.data_stall_advice] turns a waiting
fraction and the loader's settings into the concrete fixes. Usable from any loop::

    timer = DataStallTimer(window=20)
    for batch in loader:
        timer.batch_start()
        train_step(batch)
        timer.batch_end()
    print(timer.fraction())
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader

from lightning_tricks.functional._checks import check_bool, check_int, check_number

__all__ = ["DataStallTimer", "data_stall_advice"]


class DataStallTimer:
    """The fraction of recent training steps spent waiting for the next batch.

    A step's wait is the time from [`batch_end`][lightning_tricks.functional.DataStallTimer.batch_end] of the previous step to
    [`batch_start`][lightning_tricks.functional.DataStallTimer.batch_start] of this one; the step is that wait plus the time from
    [`batch_start`][lightning_tricks.functional.DataStallTimer.batch_start] to [`batch_end`][lightning_tricks.functional.DataStallTimer.batch_end]. The first step, and the first step after
    [`pause`][lightning_tricks.functional.DataStallTimer.pause] (e.g. after validation or at an epoch start), has no measured wait and
    is not counted. Only the clock is read: nothing is synchronised.

    Args:
        window: number of recent measured steps the fraction is averaged over.

    Raises:
        TypeError: if ``window`` is not an int.
        ValueError: if ``window < 1``.

    Example:
        >>> timer = DataStallTimer(window=4)
        >>> for _ in range(3):
        ...     timer.batch_start()
        ...     measured = timer.batch_end()
        >>> timer.measured, 0.0 <= timer.fraction() <= 1.0
        (2, True)
    """

    def __init__(self, window: int = 20) -> None:
        self.window = check_int("window", window, minimum=1, maximum=2**31 - 1)
        self.reset()

    def reset(self) -> None:
        """Forget every measurement."""
        self._waits: deque[float] = deque(maxlen=self.window)
        self._steps: deque[float] = deque(maxlen=self.window)
        self._last_end: float | None = None
        self._start = 0.0
        self._wait: float | None = None
        self.measured = 0

    def pause(self) -> None:
        """Do not count the time until the next [`batch_start`][lightning_tricks.functional.DataStallTimer.batch_start] as waiting for data."""
        self._last_end = None

    def batch_start(self) -> None:
        """The batch is ready: the wait that began at the last [`batch_end`][lightning_tricks.functional.DataStallTimer.batch_end] ends."""
        self._start = time.perf_counter()
        self._wait = None if self._last_end is None else self._start - self._last_end

    def batch_end(self) -> bool:
        """The step is done (read the clock after synchronising the device if the step's
        compute must be exact); the wait for the next batch begins.

        Returns:
            Whether this step was measured (it had a wait before it).
        """
        end = time.perf_counter()
        measured = self._wait is not None
        if self._wait is not None:
            self._waits.append(self._wait)
            self._steps.append(self._wait + (end - self._start))
            self.measured += 1
            self._wait = None
        self._last_end = end
        return measured

    def restart_wait(self) -> None:
        """Start the wait for the next batch now: work done since [`batch_end`][lightning_tricks.functional.DataStallTimer.batch_end] (such as
        logging) is not counted as waiting for data."""
        self._last_end = time.perf_counter()

    @property
    def full(self) -> bool:
        """Whether the window holds ``window`` measured steps."""
        return len(self._steps) == self.window

    @property
    def steps_in_window(self) -> int:
        """How many measured steps the window holds."""
        return len(self._steps)

    def fraction(self) -> float | None:
        """The waiting fraction over the last ``window`` measured steps (``None`` before any)."""
        total = sum(self._steps)
        return sum(self._waits) / total if total > 0 else None


def _loaders(obj: Any) -> list[DataLoader]:
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [dl for o in obj for dl in _loaders(o)]
    return []


def _loader_tips(loaders: list[DataLoader], cuda: bool) -> str:
    if not loaders:
        return "Use more DataLoader workers, pinned memory and persistent workers."
    dl = loaders[0]
    workers, pin, persistent = dl.num_workers, dl.pin_memory, dl.persistent_workers
    tips = []
    if workers == 0:
        tips.append(
            "set `num_workers` > 0 (start with the CPU cores per GPU, e.g. 4-8) so batches load in parallel"
        )
    else:
        tips.append(f"raise `num_workers` above {workers} if CPU cores are idle")
    if cuda and not pin:
        tips.append("set `pin_memory=True` (faster, asynchronous host-to-GPU copies)")
    if workers > 0 and not persistent:
        tips.append("set `persistent_workers=True` (workers are not restarted every epoch)")
    tips.append("move decoding/augmentation off the critical path (cache decoded data, GPU augmentation)")
    return (
        f"current train loader: num_workers={workers}, pin_memory={pin}, "
        f"persistent_workers={persistent}. Try: " + "; ".join(tips) + "."
    )


def data_stall_advice(
    fraction: float,
    loaders: Any = None,
    *,
    cuda: bool = False,
    threshold: float | None = None,
    steps: int | None = None,
) -> str:
    """Say how much of each step is spent waiting for data and what to change in the loader.

    The tips are the cheat sheet's data-loading advice for the settings the (first)
    loader does not apply yet: workers, pinned memory (on CUDA), persistent workers, and
    moving decoding/augmentation off the critical path.

    Args:
        fraction: the waiting fraction, e.g. [`DataStallTimer.fraction`][lightning_tricks.functional.DataStallTimer.fraction].
        loaders: a ``DataLoader`` or a (nested) list/tuple/dict of them; ``None`` for
            general advice.
        cuda: whether training runs on CUDA (then pinned memory is advised).
        threshold: the fraction above which this counts as a stall (named in the text).
        steps: the number of steps the fraction was measured over (named in the text).

    Returns:
        The advice, one paragraph.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a fraction or threshold outside [0, 1].

    Example:
        >>> from torch.utils.data import DataLoader
        >>> print(data_stall_advice(0.6, DataLoader(range(8), num_workers=0)))  # doctest: +ELLIPSIS
        60% of each training step is spent waiting for data: ... num_workers=0, ... set `num_workers` > 0 ...
    """
    fraction = check_number("fraction", fraction, minimum=0.0, maximum=1.0)
    check_bool("cuda", cuda)
    details = []
    if threshold is not None:
        threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
        details.append(f"threshold {100 * threshold:.0f}%")
    if steps is not None:
        details.append(f"over the last {check_int('steps', steps, minimum=1)} steps")
    where = f" ({', '.join(details)})" if details else ""
    return (
        f"{100 * fraction:.0f}% of each training step is spent waiting for data{where}: "
        "data loading is the bottleneck. " + _loader_tips(_loaders(loaders), cuda)
    )
