"""Lightning layer for the `inspect` area: activation/gradient monitoring, filter images, class activation maps and mistake guards."""

from lightning_tricks.inspect.activation_visualizer import ActivationVisualizer
from lightning_tricks.inspect.aliasing_guard import AliasingError, AliasingGuard
from lightning_tricks.inspect.filter_visualizer import FilterVisualizer
from lightning_tricks.inspect.grad_cam import ClassActivationMaps
from lightning_tricks.inspect.gradient_monitor import GradientMonitor, NonFiniteGradientError
from lightning_tricks.inspect.retained_graph_guard import RetainedGraphError, RetainedGraphGuard

__all__: list[str] = [
    "ActivationVisualizer",
    "AliasingError",
    "AliasingGuard",
    "ClassActivationMaps",
    "FilterVisualizer",
    "GradientMonitor",
    "NonFiniteGradientError",
    "RetainedGraphError",
    "RetainedGraphGuard",
]
