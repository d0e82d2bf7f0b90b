"""Pure-PyTorch cores for the `inspect` area."""

from lightning_tricks.functional.inspect.activations import (
    activation_histogram,
    activation_stats,
    capture_activations,
    feature_map_grid,
    histogram_image,
    select_layers,
)
from lightning_tricks.functional.inspect.gradients import (
    IntermediateGrads,
    NonFiniteTracker,
    first_nonfinite,
    layer_grad_norms,
)
from lightning_tricks.functional.inspect.guards import (
    RetainedGraph,
    dataset_storages,
    find_aliased_tensors,
    find_retained_graphs,
    graph_saved_bytes,
    tensor_leaves,
)
from lightning_tricks.functional.inspect.png import encode_png, to_uint8_image, write_png

__all__: list[str] = [
    "IntermediateGrads",
    "NonFiniteTracker",
    "RetainedGraph",
    "activation_histogram",
    "activation_stats",
    "capture_activations",
    "dataset_storages",
    "encode_png",
    "feature_map_grid",
    "find_aliased_tensors",
    "find_retained_graphs",
    "first_nonfinite",
    "graph_saved_bytes",
    "histogram_image",
    "layer_grad_norms",
    "select_layers",
    "tensor_leaves",
    "to_uint8_image",
    "write_png",
]
