"""Conformance settings of the filter-visualisation / Grad-CAM components (issue 15)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    # Grad-CAM of 2 validation images after every epoch: must leave weights, RNG streams and
    # optimizer state as a run without it (resume, DDP: only rank 0 computes, bf16/fp16 autocast)
    "ClassActivationMaps": Spec(init_args={"layer": "backbone.1", "num_images": 2, "every_n_epochs": 1}),
    # activation maximisation of 2 channels, 2 steps at 2 resolutions, every epoch
    "FilterVisualizer": Spec(
        init_args={"layers": "backbone.0.0", "channels": 2, "steps": 2, "rounds": 2, "every_n_epochs": 1}
    ),
}

NOT_COMPONENTS: dict[str, str] = {}
CONSTRUCT_ARGS: dict = {}
