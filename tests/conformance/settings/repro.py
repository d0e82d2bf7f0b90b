"""Conformance settings of the `repro` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec


def _split_kwargs() -> dict:
    from tests.repro_helpers import ImageDataset

    # 96 samples: 64 train (4 batches of 16), 32 val, stratified by the dataset's targets.
    return {"dataset": ImageDataset(96), "val": 32, "labels": "targets", "batch_size": 16, "num_workers": 0}


def _split_datamodule():
    from lightning_tricks import SplitDataModule

    return SplitDataModule(**_split_kwargs())


SETTINGS: dict = {
    # Every rank's RNG states in each checkpoint, restored on resume (tests/repro covers
    # dropout, shuffling loader workers and DDP).
    "ExactResume": Spec(
        skip={
            "leftovers": "cannot patch the model: saves and restores RNG states, remakes the train iterator"
        }
    ),
    # Checksums parameters and BatchNorm buffers every epoch; the records live in the
    # checkpoint (tests/repro covers checkpoints saved before the epoch was recorded).
    "ReproducibilityCheck": Spec(
        init_args={"filename": "checksums.json", "buffers": True},
        skip={"leftovers": "cannot patch the model: reads checksums of the weights"},
    ),
    # Shuffled training split (per-epoch seeded order; DistributedSampler under DDP).
    "SplitDataModule": Spec(
        factory=_split_datamodule,
        cli_init_args={
            "dataset": {"class_path": "tests.repro_helpers.ImageDataset", "init_args": {"n": 96}},
            "val": 32,
            "labels": "targets",
            "batch_size": 16,
            "num_workers": 0,
        },
        skip={"leftovers": "a datamodule: has no access to the model"},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {"ReproducibilityError": "exception raised by ReproducibilityCheck"}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {"SplitDataModule": _split_kwargs}
