"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage; this module re-exports their public functions.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# Re-exports, one block per area (keep the blocks apart: several people edit this file).
# finetune

# optim

# inference

# inspect
# isort: off
from lightning_tricks.functional.inspect import (
    IntermediateGrads,
    RetainedGraph,
    activation_histogram,
    activation_stats,
    capture_activations,
    dataset_storages,
    encode_png,
    feature_map_grid,
    find_aliased_tensors,
    find_retained_graphs,
    first_nonfinite,
    graph_saved_bytes,
    histogram_image,
    layer_grad_norms,
    select_layers,
    tensor_leaves,
    to_uint8_image,
    write_png,
)
# isort: on

# perf

# data

# repro

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    # finetune
    # optim
    # inference
    # inspect
    "IntermediateGrads",
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
    # perf
    # data
    # repro
]
