"""Pure-PyTorch cores for the `perf` area."""

from lightning_tricks.functional.perf.memory_snapshot import (
    MemoryWindow,
    dump_cpu_memory_profile,
    dump_memory_snapshot,
    start_cpu_memory_profile,
    start_memory_recording,
    stop_memory_recording,
)
from lightning_tricks.functional.perf.sync_detect import SyncDetectedError, SyncReport, detect_syncs

__all__: list[str] = []
__all__ += [
    "MemoryWindow",
    "SyncDetectedError",
    "SyncReport",
    "detect_syncs",
    "dump_cpu_memory_profile",
    "dump_memory_snapshot",
    "start_cpu_memory_profile",
    "start_memory_recording",
    "stop_memory_recording",
]
