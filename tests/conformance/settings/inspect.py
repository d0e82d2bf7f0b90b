"""Conformance settings of the `inspect` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    # captures after every epoch (so 2-4 times per fit) and at the end of fit
    "ActivationVisualizer": [
        Spec(
            init_args={"every_n_epochs": 1, "max_layers": 2, "num_samples": 4},
            id="cnn",
        ),
        Spec(
            init_args={"every_n_epochs": 2, "layers": ["backbone.*"], "max_layers": 3},
            arch="mlp",
            id="mlp",
            skip={"leftovers": "the same capture hooks as the cnn spec, which the leftovers check drives"},
        ),
    ],
    # 4 steps per epoch: samples steps 0 and 2 of every epoch (every_n_steps=2), with intermediate
    # gradients; the second spec samples on the Trainer's logging steps (every_n_steps=None)
    "GradientMonitor": [
        Spec(
            init_args={
                "every_n_steps": 2,
                "log_histograms": True,
                "on_error": "raise",
                "intermediate": ["backbone.0", "head"],
            },
            id="raise",
        ),
        # counts the fp16 step the loss scaler skips and logs (unscaled) norms on logging steps
        Spec(
            init_args={
                "every_n_steps": None,
                "on_error": "warn",
                "intermediate": ["backbone.0", "head"],
            },
            arch="mlp",
            id="warn",
            skip={"leftovers": "the same gradient hooks as the raise spec, which the leftovers check drives"},
        ),
    ],
    "RetainedGraphGuard": Spec(
        init_args={"every_n_steps": 1, "on_error": "raise"},
        skip={"leftovers": "cannot patch the model: scans its attributes for tensors with a graph"},
    ),
    "AliasingGuard": Spec(
        init_args={"every_n_steps": 1, "on_error": "raise"},
        skip={"leftovers": "cannot patch the model: compares the batches' storages with the dataset's"},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {
    "AliasingError": "exception raised by AliasingGuard",
    "NonFiniteGradientError": "exception raised by GradientMonitor",
    "RetainedGraphError": "exception raised by RetainedGraphGuard",
}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
