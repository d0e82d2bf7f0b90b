"""The "everything" recipe: setup, optimisation, monitoring and guard components attached
at once, the way users attach them; fitted by :func:`fit_everything`, in one process or as
one rank of a 2-process DDP world (``python -m tests.conformance.recipe OUT``, started by
``test_combinations.py``: straight, crashed and resumed fits in that one world, each rank's
whole states saved to ``OUT/rank<r>.pt``)."""

from __future__ import annotations

import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.conformance.checks import CrashAt, Interrupt
from tests.helpers import ClassifierModule, ImageDataModule
from tests.helpers.ddp import end_process_group
from tests.helpers.utils import whole_state


def everything(exact: bool = True) -> list:
    from lightning_tricks import (
        ActivationVisualizer,
        AliasingGuard,
        AutoClip,
        ChannelsLast,
        DataStallMonitor,
        ExactResume,
        FreezeBackbone,
        GradientMonitor,
        ReproducibilityCheck,
        RetainedGraphGuard,
        SyncDetector,
        WeightInit,
    )

    return [
        WeightInit("kaiming_normal", include=["backbone"], mode="fan_out"),
        ChannelsLast(),
        FreezeBackbone(unfreeze_at_epoch=1),
        AutoClip(percentile=10.0),
        GradientMonitor(every_n_steps=2, intermediate=["backbone.0", "head"], on_error="raise"),
        ActivationVisualizer(every_n_epochs=1, max_layers=2, num_samples=4),
        DataStallMonitor(log_every_n_steps=2, window=2, threshold=0.0),
        ReproducibilityCheck(filename="checksums.json", buffers=True),
        RetainedGraphGuard(every_n_steps=1, on_error="raise"),
        AliasingGuard(every_n_steps=1, on_error="raise"),
        SyncDetector(on_error="ignore", every_n_steps=3),
        *([ExactResume()] if exact else []),
    ]


def fit_everything(root: Path, *, epochs, ckpt_path=None, crash=None, exact=True, ddp=False, **trainer_args):
    """One fit of the recipe on the BatchNorm CNN with a shuffled loader; returns (trainer,
    whole state without the harness's checkpointing). ``ddp``: as one rank of a 2-process
    gloo world started outside (MASTER_ADDR, WORLD_SIZE, LOCAL_RANK set)."""
    if ddp:
        from lightning.pytorch.strategies import DDPStrategy

        trainer_args.update(
            devices=2, strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
        )
    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="cnn")
    ckpt = ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
    extra = [ckpt, *([CrashAt(crash)] if crash is not None else [])]
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=str(root),
        callbacks=[*everything(exact), *extra],
        **trainer_args,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the monitors' advice (stalls, syncs) is not under test here
        trainer.fit(
            model, datamodule=ImageDataModule(n_train=32, batch_size=8, shuffle=True), ckpt_path=ckpt_path
        )
    return trainer, whole_state(trainer, model, ignore_callbacks=extra)


def straight_and_resumed(root: Path, exact: bool = True, epochs: int = 3, crash: int = 2, **fit_args):
    """Whole states of a straight fit and of one crashed at the start of epoch ``crash`` and
    resumed from its ``last.ckpt``."""
    _, straight = fit_everything(root / "straight", epochs=epochs, exact=exact, **fit_args)
    try:
        fit_everything(root / "crashed", epochs=epochs, crash=crash, exact=exact, **fit_args)
    except Interrupt:
        pass
    else:
        raise AssertionError(f"the fit meant to crash at epoch {crash} finished")
    last = str(root / "crashed" / "ckpt" / "last.ckpt")
    _, resumed = fit_everything(root / "resumed", epochs=epochs, ckpt_path=last, exact=exact, **fit_args)
    return straight, resumed


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out = Path(out_dir)
    rank = int(os.environ["LOCAL_RANK"])
    L.seed_everything(0, verbose=False)
    initial = {f"model/{k}": v.clone() for k, v in ClassifierModule(arch="cnn").state_dict().items()}
    straight, resumed = straight_and_resumed(out, epochs=2, crash=1, ddp=True)
    torch.save({"initial": initial, "straight": straight, "resumed": resumed}, out / f"rank{rank}.pt")
    end_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
