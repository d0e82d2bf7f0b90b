"""ActivationVisualizer and its functional core."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks import ActivationVisualizer
from lightning_tricks.functional.inspect import (
    activation_stats,
    capture_activations,
    encode_png,
    feature_map_grid,
    histogram_image,
    select_layers,
)
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, color_type, raw rows) of an unfiltered 8-bit PNG, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + length
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8
    return width, height, color, zlib.decompress(chunks[b"IDAT"])


def test_png_roundtrip_gray_and_rgb():
    gray = torch.tensor([[0.0, 1.0, 0.5]])
    w, h, color, raw = decode_png(encode_png(gray))
    assert (w, h, color) == (3, 1, 0) and raw == bytes([0, 0, 255, 128])
    rgb = torch.zeros(3, 2, 2)
    rgb[0] = 1.0  # red
    w, h, color, raw = decode_png(encode_png(rgb))
    assert (w, h, color) == (2, 2, 2) and raw[:7] == bytes([0, 255, 0, 0, 255, 0, 0])
    PIL = pytest.importorskip("PIL.Image")
    import io

    img = PIL.open(io.BytesIO(encode_png(rgb)))
    assert img.size == (2, 2) and img.getpixel((1, 1)) == (255, 0, 0)


def test_select_layers_defaults_and_globs():
    cnn = ClassifierModule("cnn")
    assert select_layers(cnn) == ["backbone.0.0", "backbone.1.0"]
    assert select_layers(cnn, max_layers=1) == ["backbone.0.0"]
    mlp = ClassifierModule("mlp")
    assert select_layers(mlp) == ["backbone.1", "backbone.3", "head"]
    assert select_layers(cnn, ["backbone.*.2"]) == ["backbone.0.2", "backbone.1.2"]
    with pytest.raises(ValueError, match="encodr"):
        select_layers(cnn, ["encodr"])


def test_capture_is_side_effect_free():
    model = ClassifierModule("cnn")
    model.train()
    before = state_of(model, params_only=False)
    x = torch.randn(4, 3, 8, 8)
    rng = torch.get_rng_state()
    acts = capture_activations(model, x, ["backbone.0.0", "backbone.1.2"])
    assert acts["backbone.0.0"].shape == (4, 8, 8, 8)
    assert (acts["backbone.1.2"] >= 0).all()  # the ReLU output
    assert not params_equal(before, state_of(model, params_only=False))  # BN running stats untouched
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())


def test_stats_and_images():
    a = torch.zeros(2, 3, 4, 4)
    a[:, 0] = 1.0  # channel 0 alive, channels 1 and 2 dead
    mean, _std, near_zero, dead = activation_stats(a).tolist()
    assert mean == pytest.approx(1 / 3) and near_zero == pytest.approx(2 / 3) and dead == pytest.approx(2 / 3)
    grid = feature_map_grid(torch.randn(1, 4, 5, 5), max_channels=4)
    assert grid.shape == (1, 11, 11) and grid.min() >= 0 and grid.max() <= 1
    img = histogram_image(torch.tensor([[10.0, 0.0], [0.0, 10.0]]))
    assert img.shape == (3, 2, 2)
    # time 0: all mass in the lowest bin, drawn at the bottom row -> bright there
    assert img[:, 1, 0].sum() > img[:, 0, 0].sum() and img[:, 0, 1].sum() > img[:, 1, 1].sum()


def _fit(tmp_path, logger, epochs=2, **kwargs):
    torch.manual_seed(0)
    model = ClassifierModule("cnn")
    cb = ActivationVisualizer(**kwargs)
    trainer = cpu_trainer(max_epochs=epochs, logger=logger, callbacks=[cb], default_root_dir=str(tmp_path))
    trainer.fit(model, ImageDataModule())
    return trainer, model, cb


def test_tensorboard_images_histograms_scalars(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    _, model, cb = _fit(tmp_path, logger, epochs=3, every_n_epochs=1, max_channels=4)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for layer in ("backbone.0.0", "backbone.1.0"):
        assert f"activations/{layer}/feature_maps" in tags["images"]
        assert f"activations/{layer}/colorful_dimension" in tags["images"]
        assert f"activations/{layer}/histogram" in tags["histograms"]
        for stat in ("mean", "std", "near_zero_fraction", "dead_fraction"):
            assert len(acc.Scalars(f"activations/{layer}/{stat}")) == 3  # one per epoch
    # the colorful dimension grows one column per capture
    imgs = acc.Images("activations/backbone.0.0/colorful_dimension")
    assert [(i.width, i.height) for i in imgs] == [(1, 40), (2, 40), (3, 40)]
    assert (
        len(cb.history["backbone.0.0"]) == 3 and sum(cb.history["backbone.0.0"][0]) == 8 * 8 * 8 * 8
    )  # num_samples x C x H x W
    assert all(not m._forward_hooks for m in model.modules())


def test_csv_logger_writes_png_and_stats(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    with pytest.warns(UserWarning, match="written to") as record:
        trainer, _, _ = _fit(tmp_path, logger, epochs=2, every_n_epochs=1)
    assert sum("written to" in str(w.message) for w in record) == 1  # said once
    root = Path(trainer.log_dir) / "activations"
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == 2 * 2 + 2  # 2 epochs x 2 layers + 2 colorful-dimension images
    for p in pngs:
        decode_png(p.read_bytes())
    w, h, color, _ = decode_png((root / "backbone.0.0_colorful_dimension.png").read_bytes())
    assert (w, h, color) == (2, 40, 2)
    rows = list(csv.DictReader((root / "activation_stats.csv").open()))
    assert [(r["epoch"], r["layer"]) for r in rows] == [
        ("0", "backbone.0.0"),
        ("0", "backbone.1.0"),
        ("1", "backbone.0.0"),
        ("1", "backbone.1.0"),
    ]
    assert 0 <= float(rows[0]["dead_fraction"]) <= 1


def test_training_unaffected_and_user_sample(tmp_path):
    torch.manual_seed(0)
    plain = ClassifierModule("cnn")
    cpu_trainer(max_epochs=2).fit(plain, ImageDataModule(shuffle=True))
    torch.manual_seed(0)
    model = ClassifierModule("cnn")
    cb = ActivationVisualizer(every_n_epochs=1)
    cb.set_sample(torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    trainer = cpu_trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="written to"):
        trainer.fit(model, ImageDataModule(shuffle=True))
    assert not params_equal(state_of(plain, False), state_of(model, False))
    assert cb.sample.shape[0] == 3 and len(cb.history["backbone.0.0"]) == 2


def test_state_survives_checkpoint():
    cb = ActivationVisualizer()
    cb.history, cb.ranges = {"a": [[1.0, 2.0]]}, {"a": (0.0, 1.0)}
    other = ActivationVisualizer()
    other.load_state_dict(cb.state_dict())
    assert other.history == cb.history and other.ranges == cb.ranges
    other.load_state_dict({})  # an older checkpoint without the keys
    assert other.history == {}


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs"):
        ActivationVisualizer(every_n_epochs=0)
    with pytest.raises(TypeError, match="layers"):
        ActivationVisualizer(layers=[1])
    with pytest.raises(TypeError, match="batch"):
        ActivationVisualizer().set_sample("x")


def test_no_hooks_between_captures(tmp_path):
    seen = []

    from lightning.pytorch import Callback

    class CountHooks(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(sum(len(m._forward_hooks) for m in pl_module.modules()))

    model = ClassifierModule("cnn")
    trainer = cpu_trainer(
        max_epochs=2, callbacks=[ActivationVisualizer(), CountHooks()], default_root_dir=str(tmp_path)
    )
    with pytest.warns(UserWarning):
        trainer.fit(model, ImageDataModule())
    assert seen and set(seen) == {0}
