"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage (``lightning_tricks.functional.<area>``); this
module re-exports their public functions and classes.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# data
from lightning_tricks.functional.data import (
    SeededShuffleSampler,
    resolve_split_sizes,
    split_dataset,
    split_indices,
)

# finetune
from lightning_tricks.functional.finetune import (
    InitReport,
    LoadReport,
    batchnorm_eval,
    count_parameters,
    find_head,
    freeze_modules,
    init_weights,
    load_weights,
    read_weights,
    replace_head,
    save_weights,
    select_modules,
    strip_head,
    unfreeze_modules,
    unfreeze_units,
)

# inference
from lightning_tricks.functional.inference import (
    FeatureExtractor,
    View,
    extract_features,
    merge_outputs,
    parse_view,
    parse_views,
    tta_predict,
)

# inspect
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

# optim
from lightning_tricks.functional.optim import (
    AutoClipper,
    ClipResult,
    WindowMean,
    accumulation_steps,
    adaptive_clip_grad_,
    add_param_groups,
    no_bias_decay_groups,
    no_weight_decay_names,
    split_by_weight_decay,
    split_param_groups,
    unitwise_norm,
)

# perf
from lightning_tricks.functional.perf import (
    MemoryWindow,
    SyncDetectedError,
    SyncReport,
    apply_gradient_checkpointing,
    batch_to_channels_last,
    compile_modules,
    detect_syncs,
    dump_cpu_memory_profile,
    dump_memory_snapshot,
    model_to_channels_last,
    remove_gradient_checkpointing,
    start_cpu_memory_profile,
    start_memory_recording,
    stop_memory_recording,
    uncompile_modules,
)

# repro
from lightning_tricks.functional.repro import (
    Divergence,
    SeedRecord,
    first_divergence,
    freeze_seeds,
    load_checksums,
    save_checksums,
    seed_worker,
    tensor_checksums,
)

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    # finetune
    "batchnorm_eval",
    "count_parameters",
    "find_head",
    "freeze_modules",
    "init_weights",
    "InitReport",
    "load_weights",
    "LoadReport",
    "read_weights",
    "replace_head",
    "save_weights",
    "select_modules",
    "strip_head",
    "unfreeze_modules",
    "unfreeze_units",
    # optim
    "accumulation_steps",
    "adaptive_clip_grad_",
    "add_param_groups",
    "AutoClipper",
    "ClipResult",
    "no_bias_decay_groups",
    "no_weight_decay_names",
    "split_by_weight_decay",
    "split_param_groups",
    "unitwise_norm",
    "WindowMean",
    # inference
    "extract_features",
    "FeatureExtractor",
    "merge_outputs",
    "parse_view",
    "parse_views",
    "tta_predict",
    "View",
    # inspect
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
    "IntermediateGrads",
    "layer_grad_norms",
    "RetainedGraph",
    "select_layers",
    "tensor_leaves",
    "to_uint8_image",
    "write_png",
    # perf
    "apply_gradient_checkpointing",
    "batch_to_channels_last",
    "compile_modules",
    "detect_syncs",
    "dump_cpu_memory_profile",
    "dump_memory_snapshot",
    "MemoryWindow",
    "model_to_channels_last",
    "remove_gradient_checkpointing",
    "start_cpu_memory_profile",
    "start_memory_recording",
    "stop_memory_recording",
    "SyncDetectedError",
    "SyncReport",
    "uncompile_modules",
    # data
    "resolve_split_sizes",
    "SeededShuffleSampler",
    "split_dataset",
    "split_indices",
    # repro
    "Divergence",
    "first_divergence",
    "freeze_seeds",
    "load_checksums",
    "save_checksums",
    "seed_worker",
    "SeedRecord",
    "tensor_checksums",
]
