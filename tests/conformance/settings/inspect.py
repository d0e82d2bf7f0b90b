"""Conformance settings of the `inspect` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

_RANK_ZERO_HISTORY = (
    "ActivationVisualizer defect under DDP: it captures on global rank 0 only, so its state_dict "
    "(history, ranges) differs between ranks (empty on rank 1); checkpoints come from rank 0, but the "
    "ranks' states are not identical"
)

SETTINGS: dict = {
    # captures after every epoch (so 2-4 times per fit) and at the end of fit
    "ActivationVisualizer": [
        Spec(
            init_args={"every_n_epochs": 1, "max_layers": 2, "num_samples": 4},
            id="cnn",
            xfail={"ddp": _RANK_ZERO_HISTORY},
        ),
        Spec(
            init_args={"every_n_epochs": 2, "layers": ["backbone.*"], "max_layers": 3},
            arch="mlp",
            id="mlp",
            xfail={"ddp": _RANK_ZERO_HISTORY},
        ),
    ],
    # 4 steps per epoch: logs at steps 0 and 2 of every epoch, with intermediate gradients
    "GradientMonitor": [
        Spec(
            init_args={
                "every_n_steps": 2,
                "log_histograms": True,
                "detect_nonfinite": "raise",
                "intermediate": ["backbone.0", "head"],
            },
            id="raise",
        ),
        # warns on the fp16 step the loss scaler skips and logs (unscaled) norms every step
        Spec(
            init_args={
                "every_n_steps": 1,
                "detect_nonfinite": "warn",
                "intermediate": ["backbone.0", "head"],
            },
            arch="mlp",
            id="warn",
        ),
    ],
    "RetainedGraphGuard": Spec(init_args={"every_n_steps": 1, "on_error": "raise"}),
    "AliasingGuard": Spec(init_args={"every_n_steps": 1, "on_error": "raise"}),
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
