"""Lightning layer for the `perf` area."""

from lightning_tricks.perf.channels_last import ChannelsLast
from lightning_tricks.perf.compile import Compile
from lightning_tricks.perf.data_stall_monitor import DataStallMonitor
from lightning_tricks.perf.gpu_trainer import gpu_trainer, gpu_trainer_kwargs
from lightning_tricks.perf.gradient_checkpointing import GradientCheckpointing
from lightning_tricks.perf.memory_snapshot import MemorySnapshot
from lightning_tricks.perf.sync_detector import SyncDetector

__all__: list[str] = [
    "ChannelsLast",
    "Compile",
    "DataStallMonitor",
    "GradientCheckpointing",
    "MemorySnapshot",
    "SyncDetector",
    "gpu_trainer",
    "gpu_trainer_kwargs",
]
