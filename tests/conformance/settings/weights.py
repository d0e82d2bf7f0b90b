"""Conformance settings of the `weights` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

_WRITES = (
    "cannot patch the model: writes the weights at setup, no hooks or wrappers (and remembers the "
    "modules it initialised, so a later fit of the same model is meant to differ from a fresh one)"
)

SETTINGS: dict = {
    # Re-initialises the backbone (kaiming, BatchNorm to 1/0) and leaves the head as built;
    # the blocks spec excludes every LayerNorm by class name (the naming rule, from a CLI config).
    "WeightInit": [
        Spec(
            init_args={"scheme": "kaiming_normal", "include": ["backbone"], "mode": "fan_out"},
            id="cnn",
            setup_time=True,
            skip={"leftovers": _WRITES},
        ),
        Spec(
            init_args={"scheme": "trunc_normal", "std": 0.02, "exclude": ["backbone.embed", "LayerNorm"]},
            arch="blocks",
            id="blocks",
            setup_time=True,
            skip={"leftovers": _WRITES},
        ),
    ],
    # Writes the final weights of the backbone as safetensors into the log dir.
    "ExportWeights": Spec(
        init_args={"filename": "backbone.safetensors", "submodule": "backbone"},
        skip={"leftovers": "cannot patch the model: reads the weights at the end of fit"},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
