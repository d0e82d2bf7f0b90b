"""Pure-PyTorch cores for the `inspect` area.

One module per trick, with the stem of its Lightning counterpart:
``activation_visualizer`` (``ActivationVisualizer``), ``gradient_monitor``
(``GradientMonitor``), ``retained_graph_guard`` (``RetainedGraphGuard``),
``aliasing_guard`` (``AliasingGuard``), ``filter_visualizer`` (``FilterVisualizer``) and
``grad_cam`` (``ClassActivationMaps``). Tensor walking is a private helper.
"""

from lightning_tricks.functional.inspect.activation_visualizer import (
    activation_histogram,
    activation_stats,
    capture_activations,
    feature_map_grid,
    histogram_image,
    select_layers,
)
from lightning_tricks.functional.inspect.aliasing_guard import dataset_storages, find_aliased_tensors
from lightning_tricks.functional.inspect.filter_visualizer import visualize_filters
from lightning_tricks.functional.inspect.grad_cam import grad_cam
from lightning_tricks.functional.inspect.gradient_monitor import (
    IntermediateGrads,
    NonFiniteTracker,
    first_nonfinite,
    layer_grad_norms,
)
from lightning_tricks.functional.inspect.retained_graph_guard import RetainedGraph, find_retained_graphs

__all__: list[str] = [
    "IntermediateGrads",
    "NonFiniteTracker",
    "RetainedGraph",
    "activation_histogram",
    "activation_stats",
    "capture_activations",
    "dataset_storages",
    "feature_map_grid",
    "find_aliased_tensors",
    "find_retained_graphs",
    "first_nonfinite",
    "grad_cam",
    "histogram_image",
    "layer_grad_norms",
    "select_layers",
    "visualize_filters",
]
