"""The logging convention: `<component>/<key>` scalars that loggers and callbacks see."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger

from lightning_tricks._logging import component_dir, component_name, log_scalars
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


@pytest.mark.parametrize(
    ("cls_name", "expected"),
    [
        ("GradientMonitor", "gradient_monitor"),
        ("TTAEvaluation", "tta_evaluation"),
        ("AdaptiveGradientClipping", "adaptive_gradient_clipping"),
        ("ChannelsLast", "channels_last"),
        ("SyncDetector", "sync_detector"),
    ],
)
def test_component_names_are_snake_case_class_names(cls_name, expected):
    assert component_name(type(cls_name, (), {})) == expected


class Reporter(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        log_scalars(pl_module, self, {"value": outputs["loss"].detach()})

    def on_validation_epoch_end(self, trainer, pl_module):
        log_scalars(
            pl_module, self, {"score": float(10 - trainer.current_epoch)}, on_step=False, on_epoch=True
        )


def test_scalars_reach_csv_and_early_stopping(tmp_path):
    stop = EarlyStopping(monitor="reporter/score", mode="max", patience=0)
    logger = CSVLogger(tmp_path, name="run")
    trainer = cpu_trainer(max_epochs=5, callbacks=[Reporter(), stop], logger=logger, log_every_n_steps=1)
    trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule())
    assert trainer.current_epoch == 2  # the score fell after epoch 0: patience 0 stops at once
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("reporter/value") for r in rows) and any(r.get("reporter/score") for r in rows)
    assert component_dir(trainer, Reporter(), None) == tmp_path / "run" / "version_0" / "reporter"
    assert component_dir(trainer, Reporter(), tmp_path / "x") == tmp_path / "x"
