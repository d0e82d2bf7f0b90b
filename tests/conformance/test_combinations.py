"""The "everything" recipe: setup, optimisation, monitoring and guard components attached
at once (the way users attach them) fit, crash and resume bitwise (with ExactResume and a
shuffled loader), and run under bf16-mixed and fp16 with a loss scaler."""

from __future__ import annotations

import contextlib
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.conformance.checks import CrashAt, Interrupt, fp16_plugin
from tests.helpers import ClassifierModule, ImageDataModule
from tests.helpers.utils import state_diff, whole_state


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


def _fit(root, *, epochs, ckpt_path=None, crash=None, exact=True, **trainer_args):
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


def _straight_and_resumed(root, exact):
    _, straight = _fit(root / "straight", epochs=3, exact=exact)
    with contextlib.suppress(Interrupt):
        _fit(root / "crashed", epochs=3, crash=2, exact=exact)
    last = str(root / "crashed" / "ckpt" / "last.ckpt")
    _, resumed = _fit(root / "resumed", epochs=3, ckpt_path=last, exact=exact)
    return straight, resumed


@pytest.mark.slow
def test_everything_recipe_crashes_and_resumes_bitwise(tmp_path):
    straight, resumed = _straight_and_resumed(tmp_path, exact=True)
    diff = state_diff(straight, resumed)
    assert not diff, diff[:8]
    # the check can fail: without ExactResume the shuffled order after the resume is another
    straight, resumed = _straight_and_resumed(tmp_path / "plain", exact=False)
    assert any(k.startswith("model/") for k in state_diff(straight, resumed))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_everything_recipe_runs_mixed_precision(tmp_path, precision):
    if precision == "16-mixed":  # fp16 autocast with a real loss scaler, on CPU
        trainer, state = _fit(tmp_path, epochs=2, plugins=[fp16_plugin()])
    else:
        trainer, state = _fit(tmp_path, epochs=2, precision=precision)
    assert trainer.state.finished
    bad = [k for k, v in state.items() if k.startswith("model/") and not torch.isfinite(v.float()).all()]
    assert not bad
