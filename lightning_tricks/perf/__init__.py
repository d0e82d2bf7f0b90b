"""Lightning layer for the `perf` area."""

from lightning_tricks.perf.memory_snapshot import MemorySnapshot
from lightning_tricks.perf.sync_detector import SyncDetector

__all__: list[str] = []
__all__ += ["MemorySnapshot", "SyncDetector"]
