from __future__ import annotations

import logging

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_tricks import WeightInit
from lightning_tricks.functional import load_weights, save_weights
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, state_of


class Capture(Callback):
    """Weights as they are when training starts (after setup, restore and DDP wrapping)."""

    def on_train_start(self, trainer, pl_module):
        self.start = state_of(pl_module)


def test_initialises_selected_modules_before_training():
    model = ClassifierModule(arch="cnn")
    built = state_of(model)
    cap = Capture()
    cb = WeightInit("normal", std=0.5, include=["head"])
    cpu_trainer(max_epochs=1, callbacks=[cb, cap]).fit(model, datamodule=ImageDataModule(n_train=16))
    assert torch.all(cap.start["head.2.bias"] == 0)
    assert cap.start["head.2.weight"].std() == pytest.approx(0.5, rel=0.35)
    for k, v in built.items():
        if not k.startswith("head"):
            assert torch.equal(cap.start[k], v), k
    assert sorted(cb.report.initialized) == ["head.2.bias", "head.2.weight"]


def test_same_seed_same_weights_and_global_rng_untouched():
    starts = []
    for torch_seed in (1, 2):
        torch.manual_seed(torch_seed)  # the model is built differently each time
        cap = Capture()
        cpu_trainer(max_epochs=1, limit_train_batches=1, callbacks=[WeightInit(seed=3), cap]).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )
        starts.append(cap.start)
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


class RngAtSetup(Callback):
    """The global torch RNG state when its ``setup`` runs (callbacks run in list order)."""

    def setup(self, trainer, pl_module, stage):
        self.state = torch.random.get_rng_state()


@pytest.mark.parametrize("seed", [None, 5])
def test_setup_leaves_the_global_rng_stream_as_it_was(seed):
    starts = []
    for global_seed in (7, 7, 8):
        torch.manual_seed(global_seed)
        before, after, cap = RngAtSetup(), RngAtSetup(), Capture()
        cb = WeightInit("normal", seed=seed)
        trainer = cpu_trainer(max_epochs=1, limit_train_batches=1, callbacks=[before, cb, after, cap])
        trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16))
        assert torch.equal(before.state, after.state)  # dropout masks, shuffles: as without WeightInit
        starts.append(cap.start)
    # seed=None is still reproducible under a global seed, and follows it
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
    assert any(not torch.equal(starts[0][k], starts[2][k]) for k in starts[0]) == (seed is None)


def test_frozen_pretrained_hf_backbone_is_left_alone_and_reported(caplog):
    from tests.helpers.zoo import zoo_loaders, zoo_module

    train, val = zoo_loaders("resnet", n=8)
    for include_frozen in (False, True):
        module = zoo_module("resnet")
        module.model.resnet.requires_grad_(False)  # a from_pretrained backbone, frozen by the user
        backbone = state_of(module.model.resnet, params_only=False)
        cb, cap = WeightInit("normal", std=1.0, include_frozen=include_frozen), Capture()
        with caplog.at_level(logging.INFO):
            cpu_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[cb, cap]).fit(
                module, train, val
            )
        after = {
            k.removeprefix("model.resnet."): v for k, v in cap.start.items() if k.startswith("model.resnet.")
        }
        unchanged = [torch.equal(after[k], backbone[k]) for k in after]
        assert cap.start["model.classifier.1.bias"].abs().sum() == 0  # the head was initialised
        if include_frozen:
            assert not cb.report.frozen and all(f"model.resnet.{k}" in cb.report.initialized for k in after)
            convs = [k for k in after if k.endswith("convolution.weight")]
            assert convs and not any(torch.equal(after[k], backbone[k]) for k in convs)
        else:
            assert all(unchanged) and len(cb.report.frozen) == len(after)
            assert set(cb.report.initialized) == {"model.classifier.1.weight", "model.classifier.1.bias"}
            assert f"left {len(after)} frozen parameters unchanged in model.resnet" in caplog.text
            assert "include_frozen=True" in caplog.text


def test_report_is_logged(caplog):
    with caplog.at_level(logging.INFO):
        cpu_trainer(max_epochs=1, limit_train_batches=1, callbacks=[WeightInit("orthogonal")]).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )
    assert "WeightInit (orthogonal, seed 0): initialised 6 tensors" in caplog.text


def test_skips_pretrained_backbone(tmp_path):
    donor = ClassifierModule(arch="mlp")
    path = save_weights(donor.backbone, tmp_path / "backbone.safetensors")
    model = ClassifierModule(arch="mlp")
    load_weights(model.backbone, path)
    cap = Capture()
    cb = WeightInit("normal", std=1.0)
    cpu_trainer(max_epochs=1, limit_train_batches=1, callbacks=[cb, cap]).fit(
        model, datamodule=ImageDataModule(n_train=16)
    )
    donor_state = state_of(donor)
    assert all(torch.equal(cap.start[k], donor_state[k]) for k in donor_state if k.startswith("backbone"))
    assert set(cb.report.initialized) == {"head.weight", "head.bias"}


def test_never_reinitialises_a_trained_model_or_a_resumed_run(tmp_path):
    dm = ImageDataModule(n_train=16)
    model = ClassifierModule(arch="mlp")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb = WeightInit()
    cpu_trainer(max_epochs=1, callbacks=[cb, ckpt], enable_checkpointing=True).fit(model, datamodule=dm)
    trained = state_of(model)
    # a second fit of the same module keeps its trained weights
    cap = Capture()
    cpu_trainer(max_epochs=1, callbacks=[cb, cap]).fit(model, datamodule=dm)
    assert all(torch.equal(cap.start[k], trained[k]) for k in trained)
    # resuming: training starts from the checkpoint's weights
    for use_attr in (False, True):
        fresh, cap, cb2 = ClassifierModule(arch="mlp"), Capture(), WeightInit("normal", std=3.0)
        trainer = cpu_trainer(max_epochs=2, callbacks=[cb2, cap])
        if use_attr:
            trainer.ckpt_path = str(tmp_path / "last.ckpt")
            trainer.fit(fresh, datamodule=dm)
            assert cb2.report is None  # not even initialised before the restore
        else:
            trainer.fit(fresh, datamodule=dm, ckpt_path=str(tmp_path / "last.ckpt"))
        assert all(torch.equal(cap.start[k], trained[k]) for k in trained)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`scheme`"):
        WeightInit("xavier")
    with pytest.raises(TypeError, match="`seed`"):
        WeightInit(seed=1.5)
    with pytest.raises(TypeError, match="`include`"):
        WeightInit(include=[1])
    with pytest.raises(ValueError, match="`include` pattern 'encodr'"):
        cpu_trainer(max_epochs=1, callbacks=[WeightInit(include=["encodr"])]).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16)
        )


class DesyncRanks(Callback):
    """Makes every rank's model different (the global RNG stays the same) before WeightInit runs."""

    def setup(self, trainer, pl_module, stage):
        torch.manual_seed(100)
        with torch.no_grad():
            for p in pl_module.parameters():
                p.add_(trainer.global_rank)


class SaveAtSetup(Callback):
    """Saves the weights after WeightInit and the next draws of the global RNG, per rank."""

    def __init__(self, d):
        self.d = d

    def setup(self, trainer, pl_module, stage):
        state = {**state_of(pl_module), "draws": torch.rand(8)}
        torch.save(state, f"{self.d}/rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_ranks_start_equal_before_ddp_wraps_and_keep_equal_rng_streams(tmp_path):
    trainer = cpu_trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        strategy="ddp_spawn",
        devices=2,
        callbacks=[DesyncRanks(), WeightInit(seed=None), SaveAtSetup(str(tmp_path))],
    )
    trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16))
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if k != "draws")
    assert torch.equal(w0["draws"], w1["draws"])  # seed=None drew nothing from rank 0's stream
