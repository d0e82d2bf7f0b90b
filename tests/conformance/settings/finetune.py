"""Conformance settings of the `finetune` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    # unfreezing happens inside the 4 epochs of the resume check, before (gradual: epoch 1)
    # and after (epoch 2) the crash, with schedulers whose per-group state must follow.
    "FreezeBackbone": [
        Spec(
            id="gradual-lambda",
            init_args={"unfreeze_at_epoch": 1, "unfreeze_mode": "gradual", "backbone_lr_factor": 0.5},
            model_args={"scheduler": "lambda"},
            setup_time=True,
        ),
        Spec(
            id="all-onecycle-adamw",
            arch="blocks",
            # the whole backbone, named by a qualified name and a class name (the one naming rule)
            init_args={
                "backbone": ["backbone.embed", "ResidualBlock"],
                "unfreeze_at_epoch": 2,
                "backbone_lr": 0.01,
            },
            model_args={"optimizer": "adamw", "scheduler": "onecycle", "lr": 0.01, "weight_decay": 0.05},
            setup_time=True,
            skip={
                "leftovers": "the same freezing as the gradual-lambda spec, which the leftovers check drives"
            },
        ),
    ],
    "NoBiasDecay": Spec(
        init_args={"no_decay_extra": ["backbone.embed.pos"]},
        arch="blocks",
        model_args={"optimizer": "adamw", "scheduler": "onecycle", "lr": 0.01, "weight_decay": 0.05},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
