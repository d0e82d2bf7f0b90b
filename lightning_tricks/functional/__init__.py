"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage; this module re-exports their public functions.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# optim
from lightning_tricks.functional.finetune.freeze import (
    batchnorm_eval,
    freeze_modules,
    select_modules,
    unfreeze_modules,
    unfreeze_units,
)

# Re-exports, one block per area (keep the blocks apart: several people edit this file).
# finetune
from lightning_tricks.functional.finetune.heads import find_head, replace_head, strip_head
from lightning_tricks.functional.finetune.params import count_parameters
from lightning_tricks.functional.finetune.weight_init import InitReport, init_weights
from lightning_tricks.functional.finetune.weights_io import (
    LoadReport,
    load_weights,
    read_weights,
    save_weights,
)

# inference
# optim
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

# optim
from lightning_tricks.functional.optim.no_bias_decay import (
    no_bias_decay_groups,
    no_weight_decay_names,
    split_by_weight_decay,
)
from lightning_tricks.functional.optim.param_groups import add_param_groups, split_param_groups

# inspect
# perf
from lightning_tricks.functional.perf.memory_snapshot import (
    MemoryWindow,
    dump_cpu_memory_profile,
    dump_memory_snapshot,
    start_cpu_memory_profile,
    start_memory_recording,
    stop_memory_recording,
)
from lightning_tricks.functional.perf.sync_detect import SyncDetectedError, SyncReport, detect_syncs

# data

# repro

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    # finetune
    "InitReport",
    "LoadReport",
    "find_head",
    "init_weights",
    "load_weights",
    "read_weights",
    "replace_head",
    "save_weights",
    "strip_head",
    "batchnorm_eval",
    "count_parameters",
    "freeze_modules",
    "select_modules",
    "unfreeze_modules",
    "unfreeze_units",
    # optim
    "add_param_groups",
    "no_bias_decay_groups",
    "no_weight_decay_names",
    "split_by_weight_decay",
    "split_param_groups",
    # inference
    "FeatureExtractor",
    "View",
    "extract_features",
    "merge_outputs",
    "parse_view",
    "parse_views",
    "tta_predict",
    # inspect
    # perf
    "MemoryWindow",
    "SyncDetectedError",
    "SyncReport",
    "detect_syncs",
    "dump_cpu_memory_profile",
    "dump_memory_snapshot",
    "start_cpu_memory_profile",
    "start_memory_recording",
    "stop_memory_recording",
    # data
    # repro
]
