"""Conformance settings of the `optim` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

_CLIPS = "cannot patch the model: clips the gradients in on_before_optimizer_step, no hooks"

SETTINGS: dict = {
    # clip_factor small enough that units are clipped on most steps; `exclude` by the
    # naming rule (a segment-crossing glob) on top of the classifier from find_head
    "AdaptiveGradientClipping": Spec(
        init_args={"clip_factor": 0.01, "skip_classifier": True, "exclude": ["**.bias"]},
        skip={"leftovers": _CLIPS},
    ),
    # percentile 10 with a full history: every step after the first few is clipped, and the
    # history (in the checkpoint) decides the weights, so resume parity tests it
    "AutoClip": [
        Spec(init_args={"percentile": 10.0}, id="full_history", skip={"leftovers": _CLIPS}),
        # a lone string is one name: the head is left out of the clipped norm
        Spec(
            init_args={"percentile": 25.0, "history_size": 3, "exclude": "head"},
            arch="mlp",
            id="ring",
            skip={"leftovers": _CLIPS},
        ),
        # a model we did not write: HF ResNet (BatchNorm buffers in the whole state),
        # 2 batches of 8 per epoch
        Spec(init_args={"percentile": 10.0}, zoo="resnet", id="zoo-resnet", skip={"leftovers": _CLIPS}),
    ],
    # 48 samples / batch 16 = 3 batches per epoch, accumulation 2: windows of 2 and 1
    # (under 2-process DDP: 16 x 2 = 32, accumulation 1)
    "TargetBatchSize": Spec(
        init_args={"global_batch_size": 32},
        data_args={"n_train": 48},
        setup_time=True,
        skip={"leftovers": "cannot patch the model: sets the Trainer's accumulate_grad_batches at setup"},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
