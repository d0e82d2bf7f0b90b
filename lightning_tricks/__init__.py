"""lightning-tricks: training tricks as PyTorch Lightning callbacks, mixins and plugins.

The Lightning layer is imported lazily, so that ``import lightning_tricks.functional``
works on a machine without Lightning. Every public name is listed twice below: in
``__all__`` (what is public) and in ``_EXPORTS`` (the module that defines it). A test
checks that the two agree and that every name resolves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it. Keep one block per area, sorted within the block.
_EXPORTS: dict[str, str] = {
    # base
    "LightningMixin": "lightning_tricks._base",
    # finetune
    "ExportWeights": "lightning_tricks.finetune.export_weights",
    "FreezeBackbone": "lightning_tricks.finetune.freeze_backbone",
    "log_parameter_counts": "lightning_tricks.finetune.freeze_backbone",
    "WeightInit": "lightning_tricks.finetune.weight_init",
    # optim
    "AdaptiveGradientClipping": "lightning_tricks.optim.gradient_clipping",
    "AutoClip": "lightning_tricks.optim.gradient_clipping",
    "NoBiasDecay": "lightning_tricks.optim.no_bias_decay",
    "TargetBatchSize": "lightning_tricks.optim.target_batch_size",
    # inference
    "FeatureExtractor": "lightning_tricks.functional.inference.features",
    "FeaturePredict": "lightning_tricks.inference.feature_predict",
    "load_predictions": "lightning_tricks.inference.prediction_writer",
    "PredictionWriter": "lightning_tricks.inference.prediction_writer",
    "TTAEvaluation": "lightning_tricks.inference.tta_evaluation",
    "TTAPredict": "lightning_tricks.inference.tta_predict",
    # inspect
    "ActivationVisualizer": "lightning_tricks.inspect.activation_visualizer",
    "AliasingError": "lightning_tricks.inspect.aliasing_guard",
    "AliasingGuard": "lightning_tricks.inspect.aliasing_guard",
    "GradientMonitor": "lightning_tricks.inspect.gradient_monitor",
    "NonFiniteGradientError": "lightning_tricks.inspect.gradient_monitor",
    "RetainedGraphError": "lightning_tricks.inspect.retained_graph_guard",
    "RetainedGraphGuard": "lightning_tricks.inspect.retained_graph_guard",
    # perf
    "ChannelsLast": "lightning_tricks.perf.channels_last",
    "Compile": "lightning_tricks.perf.compile",
    "DataStallMonitor": "lightning_tricks.perf.data_stall_monitor",
    "gpu_trainer": "lightning_tricks.perf.gpu_trainer",
    "gpu_trainer_kwargs": "lightning_tricks.perf.gpu_trainer",
    "GradientCheckpointing": "lightning_tricks.perf.gradient_checkpointing",
    "MemorySnapshot": "lightning_tricks.perf.memory_snapshot",
    "SyncDetector": "lightning_tricks.perf.sync_detector",
    # data
    "SplitDataModule": "lightning_tricks.data.split_datamodule",
    # repro
    "freeze_seeds": "lightning_tricks.functional.repro.seeds",
    "ReproducibilityCheck": "lightning_tricks.repro.reproducibility_check",
}

__all__ = [
    "__version__",
    "functional",
    # base
    "LightningMixin",
    # finetune
    "ExportWeights",
    "FreezeBackbone",
    "log_parameter_counts",
    "WeightInit",
    # optim
    "AdaptiveGradientClipping",
    "AutoClip",
    "NoBiasDecay",
    "TargetBatchSize",
    # inference
    "FeatureExtractor",
    "FeaturePredict",
    "load_predictions",
    "PredictionWriter",
    "TTAEvaluation",
    "TTAPredict",
    # inspect
    "ActivationVisualizer",
    "AliasingError",
    "AliasingGuard",
    "GradientMonitor",
    "NonFiniteGradientError",
    "RetainedGraphError",
    "RetainedGraphGuard",
    # perf
    "ChannelsLast",
    "Compile",
    "DataStallMonitor",
    "gpu_trainer",
    "gpu_trainer_kwargs",
    "GradientCheckpointing",
    "MemorySnapshot",
    "SyncDetector",
    # data
    "SplitDataModule",
    # repro
    "freeze_seeds",
    "ReproducibilityCheck",
]


def __getattr__(name: str) -> Any:
    if name == "functional":
        return importlib.import_module("lightning_tricks.functional")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_tricks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_tricks import functional
    from lightning_tricks._base import LightningMixin
    from lightning_tricks.data.split_datamodule import SplitDataModule
    from lightning_tricks.finetune.export_weights import ExportWeights
    from lightning_tricks.finetune.freeze_backbone import FreezeBackbone, log_parameter_counts
    from lightning_tricks.finetune.weight_init import WeightInit
    from lightning_tricks.functional.inference.features import FeatureExtractor
    from lightning_tricks.functional.repro.seeds import freeze_seeds
    from lightning_tricks.inference.feature_predict import FeaturePredict
    from lightning_tricks.inference.prediction_writer import PredictionWriter, load_predictions
    from lightning_tricks.inference.tta_evaluation import TTAEvaluation
    from lightning_tricks.inference.tta_predict import TTAPredict
    from lightning_tricks.inspect.activation_visualizer import ActivationVisualizer
    from lightning_tricks.inspect.aliasing_guard import AliasingError, AliasingGuard
    from lightning_tricks.inspect.gradient_monitor import GradientMonitor, NonFiniteGradientError
    from lightning_tricks.inspect.retained_graph_guard import RetainedGraphError, RetainedGraphGuard
    from lightning_tricks.optim.gradient_clipping import AdaptiveGradientClipping, AutoClip
    from lightning_tricks.optim.no_bias_decay import NoBiasDecay
    from lightning_tricks.optim.target_batch_size import TargetBatchSize
    from lightning_tricks.perf.channels_last import ChannelsLast
    from lightning_tricks.perf.compile import Compile
    from lightning_tricks.perf.data_stall_monitor import DataStallMonitor
    from lightning_tricks.perf.gpu_trainer import gpu_trainer, gpu_trainer_kwargs
    from lightning_tricks.perf.gradient_checkpointing import GradientCheckpointing
    from lightning_tricks.perf.memory_snapshot import MemorySnapshot
    from lightning_tricks.perf.sync_detector import SyncDetector
    from lightning_tricks.repro.reproducibility_check import ReproducibilityCheck
