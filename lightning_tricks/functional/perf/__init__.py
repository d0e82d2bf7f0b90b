"""Pure-PyTorch cores for the `perf` area."""

from lightning_tricks.functional.perf.channels_last import batch_to_channels_last, model_to_channels_last
from lightning_tricks.functional.perf.compile import compile_modules, uncompile_modules
from lightning_tricks.functional.perf.data_stall_monitor import DataStallTimer, data_stall_advice
from lightning_tricks.functional.perf.gradient_checkpointing import (
    apply_gradient_checkpointing,
    remove_gradient_checkpointing,
)
from lightning_tricks.functional.perf.memory_snapshot import (
    MemoryWindow,
    dump_cpu_memory_profile,
    dump_memory_snapshot,
    start_cpu_memory_profile,
    start_memory_recording,
    stop_memory_recording,
)
from lightning_tricks.functional.perf.sync_detector import SyncDetectedError, SyncReport, detect_syncs

__all__: list[str] = [
    "DataStallTimer",
    "MemoryWindow",
    "SyncDetectedError",
    "SyncReport",
    "apply_gradient_checkpointing",
    "batch_to_channels_last",
    "compile_modules",
    "data_stall_advice",
    "detect_syncs",
    "dump_cpu_memory_profile",
    "dump_memory_snapshot",
    "model_to_channels_last",
    "remove_gradient_checkpointing",
    "start_cpu_memory_profile",
    "start_memory_recording",
    "stop_memory_recording",
    "uncompile_modules",
]
