"""ActivationVisualizer and its functional core."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks import ActivationVisualizer
from lightning_tricks.functional.inspect import (
    activation_stats,
    capture_activations,
    feature_map_grid,
    histogram_image,
    select_layers,
)
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


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


def test_capture_takes_one_name_globs_and_class_names():
    net = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(12)], torch.nn.ReLU())
    x = torch.randn(3, 2)
    assert list(capture_activations(net, x, "12")) == ["12"]  # a lone string is one name
    assert list(capture_activations(net, x, "ReLU")) == ["12"]
    assert list(capture_activations(net, x, "1*")) == ["1", "10", "11", "12"]
    assert select_layers(net, "1*", max_layers=2) == ["1", "10"]
    with pytest.raises(ValueError, match=r"`layers` names no submodule '13'"):
        capture_activations(net, x, "13")


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
        assert f"activation_visualizer/{layer}/feature_maps" in tags["images"]
        assert f"activation_visualizer/{layer}/colorful_dimension" in tags["images"]
        assert f"activation_visualizer/{layer}/histogram" in tags["histograms"]
        for stat in ("mean", "std", "near_zero_fraction", "dead_fraction"):
            assert len(acc.Scalars(f"activation_visualizer/{layer}/{stat}")) == 3  # one per epoch
    # the colorful dimension grows one column per capture
    imgs = acc.Images("activation_visualizer/backbone.0.0/colorful_dimension")
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
    root = Path(trainer.log_dir) / "activation_visualizer"
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == 2 * 2 + 2  # 2 epochs x 2 layers + 2 colorful-dimension images
    for p in pngs:
        with Image.open(p) as img:
            img.verify()  # a valid PNG: chunks and checksums
    with Image.open(root / "backbone.0.0_colorful_dimension.png") as img:
        assert (img.format, img.size, img.mode) == ("PNG", (2, 40), "RGB")
    grids = [p for p in pngs if p.parent != root]  # <epoch>_<step>/<layer>.png: (1, H, W) grids
    assert {p.name for p in grids} == {"backbone.0.0.png", "backbone.1.0.png"}
    for p in grids:
        with Image.open(p) as img:
            assert (img.format, img.mode) == ("PNG", "L")
    rows = list(csv.DictReader((root / "activation_stats.csv").open()))
    assert [(r["epoch"], r["layer"]) for r in rows] == [
        ("0", "backbone.0.0"),
        ("0", "backbone.1.0"),
        ("1", "backbone.0.0"),
        ("1", "backbone.1.0"),
    ]
    assert 0 <= float(rows[0]["dead_fraction"]) <= 1
    # the statistics also reach the CSV logger, through `LightningModule.log`, once per epoch
    with open(logger.experiment.metrics_file_path) as f:
        metrics = list(csv.DictReader(f))
    for layer in ("backbone.0.0", "backbone.1.0"):
        for stat in ("mean", "std", "near_zero_fraction", "dead_fraction"):
            key = f"activation_visualizer/{layer}/{stat}"
            logged = [(r["epoch"], float(r[key])) for r in metrics if r.get(key)]
            assert [e for e, _ in logged] == ["0", "1"]
            csv_rows = [r for r in rows if r["layer"] == layer]
            assert [v for _, v in logged] == pytest.approx([float(r[stat]) for r in csv_rows], rel=1e-5)


def test_dirpath_and_a_last_epoch_off_the_schedule_is_captured_and_logged(tmp_path):
    """every_n_epochs=2 over 3 epochs: captures after epochs 2 and 3 (the last), both logged."""
    logger = CSVLogger(str(tmp_path), name="csv")
    with pytest.warns(UserWarning, match="written to"):
        trainer, _, cb = _fit(tmp_path, logger, epochs=3, every_n_epochs=2, dirpath=str(tmp_path / "viz"))
    assert (tmp_path / "viz" / "activation_stats.csv").exists()
    assert not (Path(trainer.log_dir) / "activation_visualizer").exists()
    with open(logger.experiment.metrics_file_path) as f:
        metrics = list(csv.DictReader(f))
    key = "activation_visualizer/backbone.0.0/mean"
    assert [r["epoch"] for r in metrics if r.get(key)] == ["1", "2"]
    assert len(cb.history["backbone.0.0"]) == 2


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


# ------------------------------------------------------------------ zoo models (issue 11)
def _kill_half_the_units(linear: torch.nn.Linear) -> None:
    """Zero the weight rows and bias of half the output units: those units (and GELU of them) are 0."""
    with torch.no_grad():
        half = linear.out_features // 2
        linear.weight[:half] = 0.0
        linear.bias[:half] = 0.0


ZOO_LAYERS = {  # (layer with half its units dead, its activation function after it)
    "bert": ("model.bert.encoder.layer.0.intermediate.dense", "model.bert.encoder.layer.0.intermediate"),
    "vit": ("model.vit.layers.0.mlp.fc1", "model.vit.layers.0.mlp.activation_fn"),
}


def _zoo_fit(tmp_path, name, cb, **trainer_args):
    from tests.helpers.zoo import zoo_loaders, zoo_module

    torch.manual_seed(0)
    model = zoo_module(name, lr=0.0)  # lr 0: the units killed below stay dead
    train, val = zoo_loaders(name, n=8, batch_size=8)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = cpu_trainer(**{"max_epochs": 1, "logger": logger, "callbacks": [cb], **trainer_args})
    return model, train, val, trainer, logger


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_sequence_activations_have_per_feature_stats_and_heat_maps(tmp_path, name):
    """(B, T, F) outputs: a unit is a feature, not a token; half the FFN units dead reads 0.5."""
    dense, act = ZOO_LAYERS[name]
    cb = ActivationVisualizer(layers=[dense, act], num_samples=4)
    model, train, val, trainer, logger = _zoo_fit(tmp_path, name, cb)
    _kill_half_the_units(model.get_submodule(dense))
    trainer.fit(model, train, val)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    for layer in (dense, act):
        (dead,) = acc.Scalars(f"activation_visualizer/{layer}/dead_fraction")
        assert dead.value == pytest.approx(0.5)
        assert cb.last_stats[layer]["dead_fraction"] == pytest.approx(0.5)
        assert cb.last_stats[layer]["near_zero_fraction"] >= 0.5
        (img,) = acc.Images(f"activation_visualizer/{layer}/feature_maps")
        tokens = 12 if name == "bert" else 17  # BERT's sequence; ViT's 16 patches + CLS
        # one tokens x features heat map per sample (4 samples, 1-pixel gaps), not 1-pixel strips
        assert (img.width, img.height) == (32, 4 * (tokens + 1) - 1)


def test_conv_activations_have_per_channel_stats_on_resnet(tmp_path):
    conv = "model.resnet.embedder.embedder.convolution"
    cb = ActivationVisualizer(max_layers=2)  # the default: the first Conv2d layers
    model, train, val, trainer, logger = _zoo_fit(tmp_path, "resnet", cb)
    with torch.no_grad():
        model.get_submodule(conv).weight[:4] = 0.0  # 4 of 8 output channels dead
    trainer.fit(model, train, val)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert acc.Scalars(f"activation_visualizer/{conv}/dead_fraction")[0].value == pytest.approx(0.5)
    other = "model.resnet.encoder.stages.0.layers.0.layer.0.convolution"
    assert acc.Scalars(f"activation_visualizer/{other}/dead_fraction")[0].value < 0.5
    (img,) = acc.Images(f"activation_visualizer/{conv}/feature_maps")
    assert (img.width, img.height) == (3 * 17 - 1, 3 * 17 - 1)  # 8 maps of 16x16 in a 3x3 grid


def test_keyword_forward_module_is_replayed_with_its_dict_batch(tmp_path):
    """`forward(self, **batch)` (HF habit): the sample is replayed as `pl_module(**batch)`, no crash."""
    cb = ActivationVisualizer(every_n_epochs=1)
    model, train, val, trainer, _ = _zoo_fit(tmp_path, "bert", cb, max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*(LeafSpec|workers|litlogger|log_every_n_steps).*")
        trainer.fit(model, train, val)
    assert set(cb.last_stats) == set(select_layers(model))
    assert cb.sample["input_ids"].shape == (8, 12) and set(cb.sample) == {
        "input_ids",
        "attention_mask",
        "labels",
    }
    assert all(len(h) == 2 for h in cb.history.values())  # a capture after each epoch


def test_user_forward_hook_and_failures_never_stop_training(tmp_path):
    from tests.helpers.zoo import HFTextClassifier

    class OwnForward(HFTextClassifier):
        def activation_forward(self, batch):
            self.replayed = sorted(batch)
            return self.model(input_ids=batch["input_ids"])

    cb = ActivationVisualizer(layers=["model.bert.encoder.layer.0.output.dense"])
    model, train, val, trainer, _ = _zoo_fit(tmp_path, "bert", cb)
    model = OwnForward(lr=0.0)
    trainer.fit(model, train, val)
    assert model.replayed == ["attention_mask", "input_ids", "labels"]
    assert cb.last_stats

    class Broken(HFTextClassifier):
        def activation_forward(self, batch):
            raise RuntimeError("no such head")

    cb = ActivationVisualizer(every_n_epochs=1)
    model, train, val, trainer, _ = _zoo_fit(tmp_path / "b", "bert", cb, max_epochs=2)
    with pytest.warns(UserWarning, match="RuntimeError: no such head") as record:
        trainer.fit(Broken(lr=0.0), train, val)
    assert sum("capturing activations failed" in str(w.message) for w in record) == 1  # once
    assert trainer.current_epoch == 2 and not cb.last_stats


def test_unexpected_loader_errors_are_named_not_swallowed(tmp_path):
    from torch.utils.data import DataLoader, Dataset

    class Corrupt(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise OSError("corrupt shard 3")

    cb = ActivationVisualizer(max_layers=1)
    trainer = cpu_trainer(
        max_epochs=1, callbacks=[cb], limit_val_batches=0, logger=False, default_root_dir=str(tmp_path)
    )
    dm = ImageDataModule()
    dm.val_dataloader = lambda: DataLoader(Corrupt(), batch_size=2)
    with pytest.warns(UserWarning, match="OSError: corrupt shard 3"):
        trainer.fit(ClassifierModule("cnn"), dm)
    assert cb.sample is not None and cb.last_stats  # fell back to the training loader
