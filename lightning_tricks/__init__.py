"""lightning-tricks: training tricks as PyTorch Lightning callbacks, mixins and plugins.

The Lightning layer is imported lazily, so that ``import lightning_tricks.functional``
works on a machine without Lightning. Every public name is written once, in the
``TYPE_CHECKING`` import block at the end of this file: type checkers and IDEs read the
imports, and at run time the block is parsed into ``_EXPORTS`` (name -> defining module),
from which ``__all__`` and the lazy ``__getattr__`` follow.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _exports_from_type_checking_block() -> dict[str, str]:
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    exports: dict[str, str] = {}
    for node in block.body:
        if isinstance(node, ast.ImportFrom) and node.module != "lightning_tricks":
            for alias in node.names:
                exports[alias.asname or alias.name] = str(node.module)
    return exports


# name -> module that defines it, read from the import block below.
_EXPORTS: dict[str, str] = _exports_from_type_checking_block()

__all__ = ["__version__", "functional", *_EXPORTS]


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


# The public names, each written once. `X as X` marks a re-export for type checkers.
if TYPE_CHECKING:  # pragma: no cover - read by type checkers, IDEs and _exports_from_type_checking_block
    from lightning_tricks import functional as functional
    from lightning_tricks._base import LightningMixin as LightningMixin
    from lightning_tricks.data.split_datamodule import SplitDataModule as SplitDataModule
    from lightning_tricks.finetune.freeze_backbone import FreezeBackbone as FreezeBackbone
    from lightning_tricks.finetune.parameter_counts import log_parameter_counts as log_parameter_counts
    from lightning_tricks.finetune.safe_checkpoint_io import SafeCheckpointIO as SafeCheckpointIO
    from lightning_tricks.finetune.weight_init import WeightInit as WeightInit
    from lightning_tricks.finetune.weights_io import ExportWeights as ExportWeights
    from lightning_tricks.functional.inference.features import FeatureExtractor as FeatureExtractor
    from lightning_tricks.functional.repro.seeds import freeze_seeds as freeze_seeds
    from lightning_tricks.inference.features import FeaturePredict as FeaturePredict
    from lightning_tricks.inference.prediction_writer import PredictionWriter as PredictionWriter
    from lightning_tricks.inference.prediction_writer import load_predictions as load_predictions
    from lightning_tricks.inference.tta_evaluation import TTAEvaluation as TTAEvaluation
    from lightning_tricks.inference.tta_predict import TTAPredict as TTAPredict
    from lightning_tricks.inspect.activation_visualizer import ActivationVisualizer as ActivationVisualizer
    from lightning_tricks.inspect.aliasing_guard import AliasingError as AliasingError
    from lightning_tricks.inspect.aliasing_guard import AliasingGuard as AliasingGuard
    from lightning_tricks.inspect.filter_visualizer import FilterVisualizer as FilterVisualizer
    from lightning_tricks.inspect.grad_cam import ClassActivationMaps as ClassActivationMaps
    from lightning_tricks.inspect.gradient_monitor import GradientMonitor as GradientMonitor
    from lightning_tricks.inspect.gradient_monitor import NonFiniteGradientError as NonFiniteGradientError
    from lightning_tricks.inspect.retained_graph_guard import RetainedGraphError as RetainedGraphError
    from lightning_tricks.inspect.retained_graph_guard import RetainedGraphGuard as RetainedGraphGuard
    from lightning_tricks.optim.agc import AdaptiveGradientClipping as AdaptiveGradientClipping
    from lightning_tricks.optim.autoclip import AutoClip as AutoClip
    from lightning_tricks.optim.no_bias_decay import NoBiasDecay as NoBiasDecay
    from lightning_tricks.optim.target_batch_size import TargetBatchSize as TargetBatchSize
    from lightning_tricks.perf.channels_last import ChannelsLast as ChannelsLast
    from lightning_tricks.perf.compile import Compile as Compile
    from lightning_tricks.perf.data_stall_monitor import DataStallMonitor as DataStallMonitor
    from lightning_tricks.perf.gpu_trainer import gpu_trainer as gpu_trainer
    from lightning_tricks.perf.gpu_trainer import gpu_trainer_kwargs as gpu_trainer_kwargs
    from lightning_tricks.perf.gradient_checkpointing import GradientCheckpointing as GradientCheckpointing
    from lightning_tricks.perf.memory_snapshot import MemorySnapshot as MemorySnapshot
    from lightning_tricks.perf.sync_detector import SyncDetector as SyncDetector
    from lightning_tricks.repro.exact_resume import ExactResume as ExactResume
    from lightning_tricks.repro.reproducibility_check import ReproducibilityCheck as ReproducibilityCheck
    from lightning_tricks.repro.reproducibility_check import ReproducibilityError as ReproducibilityError
