"""Lightning layer for the `perf` area."""

__all__: list[str] = []

# perfspeed
from lightning_tricks.perf.channels_last import ChannelsLast
from lightning_tricks.perf.compile import Compile
from lightning_tricks.perf.data_stall_monitor import DataStallMonitor
from lightning_tricks.perf.gpu_trainer import gpu_trainer, gpu_trainer_kwargs
from lightning_tricks.perf.gradient_checkpointing import GradientCheckpointing

__all__ += [
    "ChannelsLast",
    "Compile",
    "DataStallMonitor",
    "GradientCheckpointing",
    "gpu_trainer",
    "gpu_trainer_kwargs",
]
