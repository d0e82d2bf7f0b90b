"""The logging convention: `<component>/<key>` scalars that loggers and callbacks see."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lightning_tricks._logging import component_dir, component_name, log_scalars, write_png
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


def test_write_png_writes_what_pillow_reads_back(tmp_path):
    gray = write_png(tmp_path / "gray.png", torch.tensor([[0.0, 1.0, 0.5, float("nan"), 2.0]]))
    with Image.open(gray) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "L", (5, 1))
        assert list(img.getdata()) == [0, 255, 128, 0, 255]  # [0, 1] scaled, NaN -> 0, clamped
    rgb = torch.zeros(3, 2, 4)
    rgb[0] = 1.0  # channels first, as TensorBoard takes them
    rgb[2, 1, 3] = 0.25
    for name, image in (("chw", rgb), ("hwc", rgb.permute(1, 2, 0)), ("u8", (rgb * 255).round().byte())):
        with Image.open(write_png(tmp_path / "sub" / f"{name}.png", image)) as img:
            assert (img.mode, img.size) == ("RGB", (4, 2))
            assert img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((3, 1)) == (255, 0, 64)
    with Image.open(write_png(tmp_path / "one.png", torch.ones(1, 3, 2))) as img:
        assert (img.mode, img.size) == ("L", (2, 3))
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "chw.png",
        "gray.png",
        "hwc.png",
        "one.png",
        "sub",
        "u8.png",
    ]


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), (2, 1, 3, 4), (0, 3)])
def test_write_png_refuses_other_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match=r"`image` must have shape .* got " + re.escape(str(shape))):
        write_png(tmp_path / "x.png", torch.zeros(shape))
    with pytest.raises(TypeError, match=re.escape("`image` must be a torch.Tensor; got list")):
        write_png(tmp_path / "x.png", [[0.0]])
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
