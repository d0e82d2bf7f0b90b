"""Pure-PyTorch cores of every trick: no Lightning import, usable from any training loop.

Each area lives in its own subpackage; this module re-exports their public functions.
"""

from __future__ import annotations

from lightning_tricks.functional._io import atomic_write, atomic_write_bytes, atomic_write_text

# Re-exports, one block per area (keep the blocks apart: several people edit this file).
# finetune
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

# inspect

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
    "FeatureExtractor",
    "View",
    "extract_features",
    "merge_outputs",
    "parse_view",
    "parse_views",
    "tta_predict",
    # inspect
    # perf
    # data
    # repro
]
