"""Conformance settings of the `weights` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    # Re-initialises the backbone (kaiming, BatchNorm to 1/0) and leaves the head as built;
    # the blocks spec excludes every LayerNorm by class name (the naming rule, from a CLI config).
    "WeightInit": [
        Spec(init_args={"scheme": "kaiming_normal", "include": ["backbone"], "mode": "fan_out"}, id="cnn"),
        Spec(
            init_args={"scheme": "trunc_normal", "std": 0.02, "exclude": ["backbone.embed", "LayerNorm"]},
            arch="blocks",
            id="blocks",
        ),
    ],
    # Writes the final weights of the backbone as safetensors into the log dir.
    "ExportWeights": Spec(init_args={"filename": "backbone.safetensors", "submodule": "backbone"}),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
