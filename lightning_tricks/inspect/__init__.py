"""Lightning layer for the `inspect` area: activation/gradient monitoring and mistake guards."""

from lightning_tricks.inspect.activation_visualizer import ActivationVisualizer
from lightning_tricks.inspect.aliasing_guard import AliasingError, AliasingGuard
from lightning_tricks.inspect.gradient_monitor import GradientMonitor, NonFiniteGradientError
from lightning_tricks.inspect.retained_graph_guard import RetainedGraphError, RetainedGraphGuard

__all__: list[str] = [
    "ActivationVisualizer",
    "AliasingError",
    "AliasingGuard",
    "GradientMonitor",
    "NonFiniteGradientError",
    "RetainedGraphError",
    "RetainedGraphGuard",
]
