"""Head surgery: find_head/replace_head/strip_head on tiny models, then the fine-tuning flow through Lightning."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_tricks import WeightInit
from lightning_tricks.functional import find_head, load_weights, replace_head, strip_head
from tests.helpers import (
    BlockNet,
    ClassifierModule,
    ImageDataModule,
    SmallCNN,
    cpu_trainer,
    make_mlp,
    state_of,
)


class TimmLike(nn.Module):
    """A timm-style model: the classifier is not the last registered Linear."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
        self.classifier = nn.Linear(6, num_classes)
        self.aux = nn.Linear(6, 2)  # registered last, but not the classifier

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x):
        return self.classifier(self.features(x))


def test_find_head_on_the_test_models():
    assert find_head(make_mlp()) == "head"
    assert find_head(SmallCNN()) == "head.2"  # Sequential head: pool, flatten, linear
    # nested head; the attention out_proj Linear subclasses are not classifiers
    assert find_head(BlockNet()) == "head.fc"
    assert find_head(BlockNet(), attr="head") == "head.fc"
    assert find_head(SmallCNN(), attr="head.2") == "head.2"


def test_find_head_uses_get_classifier():
    assert find_head(TimmLike()) == "classifier"


def test_replace_head_keeps_dtype_and_returns_old_head():
    net = SmallCNN().double()
    before = state_of(net.backbone)
    old = net.head[2]
    returned = replace_head(net, 7)
    assert returned is old
    new = net.head[2]
    assert new is not old and new.out_features == 7 and new.in_features == old.in_features
    assert new.weight.dtype == torch.float64
    assert net(torch.zeros(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 7)
    after = state_of(net.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_replace_head_keeps_device_and_bias_setting():
    net = nn.Sequential(nn.Linear(4, 8, device="meta"), nn.Linear(8, 3, bias=False, device="meta"))
    replace_head(net, 5)
    assert net[1].weight.device.type == "meta" and net[1].bias is None and net[1].out_features == 5


def test_replace_head_nested_and_timm():
    net = BlockNet()
    replace_head(net, 9)
    assert isinstance(net.head.norm, nn.LayerNorm)  # the head module survives, only fc changes
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 9)
    timm = TimmLike()
    replace_head(timm, 10)
    assert timm.classifier.out_features == 10 and timm.num_classes == 10 and timm.aux.out_features == 2


def test_strip_head_returns_the_features_the_head_saw():
    net = BlockNet().eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = net.head.norm(net.backbone(x)).mean(dim=1)
        fc = strip_head(net)
        assert isinstance(net.head.fc, nn.Identity) and isinstance(fc, nn.Linear)
        assert torch.allclose(net(x), expected)
    cnn = SmallCNN()
    strip_head(cnn)
    assert cnn(x).shape == (3, 16)
    timm = TimmLike()
    strip_head(timm)
    assert timm.num_classes == 0 and timm(torch.zeros(1, 3, 2, 2)).shape == (1, 6)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"could not find a classifier head.*`attr`"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()))
    with pytest.raises(
        ValueError, match=r"`attr` names no submodule 'haed'.*available: backbone.*head.*did you mean 'head'"
    ):
        replace_head(make_mlp(), 3, attr="haed")
    with pytest.raises(ValueError, match="`num_outputs`"):
        replace_head(make_mlp(), 0)
    with pytest.raises(TypeError, match="`num_outputs`"):
        replace_head(make_mlp(), 2.5)
    with pytest.raises(TypeError, match="`model`"):
        strip_head("resnet18")
    with pytest.raises(ValueError, match=r"not an nn.Linear"):
        replace_head(nn.Sequential(nn.Conv2d(3, 4, 3)), 3, attr="0")  # a 1x1 conv is a dense head
    with pytest.raises(ValueError, match=r"contains no nn.Linear"):
        find_head(SmallCNN(), attr="backbone.0")


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


def test_attr_follows_the_naming_rule_and_must_select_exactly_one():
    assert find_head(BlockNet(), attr="**.fc") == "head.fc"  # "**" crosses segments
    assert find_head(SmallCNN(), attr="he*") == "head.2"  # a glob selecting one container
    net = TimmLike()
    replace_head(net, 3, attr="classif*")
    assert net.classifier.out_features == 3 and net.aux.out_features == 2
    with pytest.raises(ValueError, match=r"`attr` must select exactly one submodule.*'Linear'.*selects 3"):
        find_head(TimmLike(), attr="Linear")
    with pytest.raises(ValueError, match=r"`attr` names no submodule 'clasifier'.*did you mean 'classifier'"):
        strip_head(TimmLike(), attr="clasifier")
