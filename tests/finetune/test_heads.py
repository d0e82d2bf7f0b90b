"""Fine-tuning flow: a trained classifier gets a new head, keeps its backbone, and trains."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_tricks import WeightInit
from lightning_tricks.functional import load_weights, replace_head, strip_head
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, state_of


class Capture(Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = state_of(pl_module)


def test_new_head_on_a_trained_checkpoint_then_fit(tmp_path):
    dm = ImageDataModule(n_train=16)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cpu_trainer(max_epochs=1, callbacks=[ckpt], enable_checkpointing=True).fit(
        ClassifierModule(arch="blocks"), datamodule=dm
    )
    model = ClassifierModule(arch="blocks")
    old = replace_head(model, 4, attr="head")  # same classes, fresh layer
    assert old is not model.head.fc
    report = load_weights(model, tmp_path / "last.ckpt")
    assert report.ok  # every tensor loads, the new head too
    trained = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    model2 = ClassifierModule(arch="blocks", num_classes=7)
    report = load_weights(model2, tmp_path / "last.ckpt")
    assert set(report.mismatched) == {"head.fc.weight", "head.fc.bias"} and not report.missing
    cb, cap = WeightInit("trunc_normal", std=0.02), Capture()
    cpu_trainer(max_epochs=1, limit_train_batches=1, callbacks=[cb, cap]).fit(model2, datamodule=dm)
    assert set(cb.report.initialized) == {"head.fc.weight", "head.fc.bias"}  # only the new head
    for k, v in cap.start.items():
        if k.startswith("head.fc"):
            assert v.shape[0] == 7 and v.abs().max() <= 0.04
        else:
            assert torch.equal(v, trained[k]), k  # pretrained tensors kept by WeightInit


def test_strip_head_gives_features_through_the_lightning_module():
    model = ClassifierModule(arch="cnn").eval()
    strip_head(model)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 16)


def test_replaced_head_is_not_pretrained_so_weight_init_initialises_it(tmp_path):
    from lightning_tricks.functional import init_weights, save_weights

    source = ClassifierModule(arch="mlp")
    save_weights(source, tmp_path / "w.safetensors")
    model = ClassifierModule(arch="mlp")
    load_weights(model, tmp_path / "w.safetensors")
    replace_head(model, 7)
    with torch.no_grad():
        model.head.weight.fill_(3.0)
    backbone_before = state_of(model.backbone)
    init_weights(model, "xavier_normal", skip_pretrained=True)
    assert not torch.all(model.head.weight == 3.0), "the new head was skipped as if it were pretrained"
    after = state_of(model.backbone)
    assert all(torch.equal(backbone_before[k], after[k]) for k in after), "loaded backbone was re-initialised"
