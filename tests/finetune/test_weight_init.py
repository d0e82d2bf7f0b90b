"""init_weights (functional) and WeightInit (callback)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_tricks import WeightInit
from lightning_tricks.functional import init_weights, load_weights, save_weights
from lightning_tricks.functional.finetune.weight_init import SCHEMES
from tests.helpers import (
    BlockNet,
    ClassifierModule,
    ImageDataModule,
    SmallCNN,
    cpu_trainer,
    make_mlp,
    state_of,
)
from tests.helpers.ddp import GlooDDP


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FAN_IN, FAN_OUT = 32 * 3 * 3, 256 * 3 * 3  # a Conv2d(32, 256, 3) weight


def conv() -> nn.Conv2d:
    return nn.Conv2d(32, 256, 3)


@pytest.mark.parametrize(
    ("scheme", "kwargs", "expected_std", "max_abs"),
    [
        ("kaiming_normal", {}, math.sqrt(2) / math.sqrt(FAN_IN), None),
        ("kaiming_normal", {"mode": "fan_out"}, math.sqrt(2) / math.sqrt(FAN_OUT), None),
        (
            "kaiming_normal",
            {"nonlinearity": "leaky_relu", "negative_slope": 0.2},
            math.sqrt(2 / 1.04) / math.sqrt(FAN_IN),
            None,
        ),
        ("kaiming_uniform", {}, math.sqrt(2) / math.sqrt(FAN_IN), math.sqrt(2) * math.sqrt(3 / FAN_IN)),
        ("kaiming_normal", {"nonlinearity": "tanh"}, (5 / 3) / math.sqrt(FAN_IN), None),
        ("xavier_normal", {"gain": 2.0}, 2.0 * math.sqrt(2 / (FAN_IN + FAN_OUT)), None),
        ("xavier_uniform", {}, math.sqrt(2 / (FAN_IN + FAN_OUT)), math.sqrt(6 / (FAN_IN + FAN_OUT))),
        ("normal", {"std": 0.1}, 0.1, None),
        ("uniform", {"bound": 0.3}, 0.3 / math.sqrt(3), 0.3),
        # N(0, s^2) truncated at +-2s has std s * 0.8796
        ("trunc_normal", {"std": 0.05}, 0.05 * 0.87962566, 0.1),
    ],
)
def test_scheme_statistics_match_theory(scheme, kwargs, expected_std, max_abs):
    layer = conv()
    nn.init.constant_(layer.bias, 3.0)
    report = init_weights(layer, scheme, generator=gen(), **kwargs)
    w = layer.weight.detach()
    assert abs(w.mean().item()) < 0.02 * expected_std * 10
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    if max_abs is not None:
        assert w.abs().max().item() <= max_abs + 1e-7
    assert torch.count_nonzero(layer.bias) == 0
    assert report.initialized["weight"].startswith(scheme) and report.initialized["bias"] == "zeros"


def test_orthogonal_rows_are_orthonormal_times_gain():
    layer = nn.Linear(64, 32)
    init_weights(layer, "orthogonal", gain=1.5, generator=gen())
    w = layer.weight.detach()
    assert torch.allclose(w @ w.T, 1.5**2 * torch.eye(32), atol=1e-4)


def test_norm_layers_get_one_and_zero_and_biases_are_zeroed():
    net = SmallCNN()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    report = init_weights(net, "kaiming_normal", generator=gen())
    for bn in (net.backbone[0][1], net.backbone[1][1]):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(net.head[2].bias == 0)
    assert report.initialized["backbone.0.1.weight"] == "ones"
    assert not report.skipped


def test_multihead_attention_and_layernorm_of_blocknet():
    net = BlockNet(dim=64)
    init_weights(net, "xavier_uniform", generator=gen())
    attn = net.backbone.blocks[0].attn
    bound = math.sqrt(6 / (64 + 3 * 64))
    assert attn.in_proj_weight.abs().max() <= bound and torch.all(attn.in_proj_bias == 0)
    assert torch.all(net.backbone.blocks[0].norm1.weight == 1)


def test_select_by_name_glob_and_type():
    net = SmallCNN()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = init_weights(net, "normal", std=1.0, include=["head"], generator=gen())
    assert sorted(report.initialized) == ["head.2.bias", "head.2.weight"]
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert sorted(changed) == ["head.2.bias", "head.2.weight"]  # nothing outside the head changed
    net = SmallCNN()
    report = init_weights(
        net, "normal", types=["Conv2d"], exclude=["backbone.1*"], init_norm=False, generator=gen()
    )
    assert sorted(report.initialized) == ["backbone.0.0.weight"]


def test_skip_and_skip_pretrained(tmp_path):
    src = make_mlp()
    path = save_weights(src.backbone, tmp_path / "backbone.safetensors")
    net = make_mlp()
    load_weights(net.backbone, path)
    report = init_weights(net, "normal", std=5.0, generator=gen())
    assert set(report.initialized) == {"head.weight", "head.bias"}
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[k], v)
    report = init_weights(net, "normal", skip_pretrained=False, skip=["head.bias"], generator=gen())
    assert "backbone.1.weight" in report.initialized and "head.bias" not in report.initialized


class BasicBlock(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class TimmBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.called = False

    def zero_init_last(self):
        self.called = True
        nn.init.zeros_(self.fc.weight)


def test_zero_init_last_bn_makes_residual_blocks_identity():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), BasicBlock(), BasicBlock())
    report = init_weights(net, "kaiming_normal", zero_init_last_bn=True, generator=gen())
    assert torch.all(net[1].bn2.weight == 0) and torch.all(net[1].bn1.weight == 1)
    assert report.initialized["2.bn2.weight"] == "zeros (last BatchNorm of block)"
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(net[1](x), x)
    timm = nn.Sequential(TimmBlock())
    init_weights(timm, "normal", zero_init_last_bn=True, generator=gen())
    assert timm[0].called and torch.all(timm[0].fc.weight == 0)
    with pytest.raises(ValueError, match="zero_init_last_bn"):
        init_weights(make_mlp(), zero_init_last_bn=True)


def test_generator_reproducible_and_global_rng_untouched():
    a, b, c = make_mlp(), make_mlp(), make_mlp()
    state = torch.random.get_rng_state()
    init_weights(a, "trunc_normal", generator=gen(1))
    init_weights(b, "trunc_normal", generator=gen(1))
    init_weights(c, "trunc_normal", generator=gen(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_bad_input_names_the_argument():
    net = make_mlp()
    with pytest.raises(ValueError, match="`scheme`"):
        init_weights(net, "he_normal")
    with pytest.raises(ValueError, match=r"`include` names no submodule 'haed'.*did you mean 'head'"):
        init_weights(net, include=["haed"])
    with pytest.raises(ValueError, match="`types`"):
        init_weights(net, types=["Linaer"])
    with pytest.raises(ValueError, match="`std`"):
        init_weights(net, "normal", std=float("nan"))
    with pytest.raises(ValueError, match="`nonlinearity`"):
        init_weights(net, nonlinearity="swish")
    with pytest.raises(ValueError, match="`skip`"):
        init_weights(net, skip=["nope.weight"])
    with pytest.raises(TypeError, match="`generator`"):
        init_weights(net, generator=0)
    with pytest.raises(TypeError, match="`module`"):
        init_weights({"w": torch.ones(2)})


def test_embedding_padding_row_stays_zero():
    emb = nn.Embedding(10, 8, padding_idx=0)
    init_weights(emb, "normal", std=1.0, generator=gen())
    assert torch.all(emb.weight[0] == 0) and emb.weight[1:].abs().sum() > 0


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
    with pytest.raises(ValueError, match="`include` names no submodule 'encodr'"):
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
        strategy=GlooDDP(start_method="spawn"),
        devices=2,
        callbacks=[DesyncRanks(), WeightInit(seed=None), SaveAtSetup(str(tmp_path))],
    )
    trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule(n_train=16))
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if k != "draws")
    assert torch.equal(w0["draws"], w1["draws"])  # seed=None drew nothing from rank 0's stream


class ConvNet(nn.Module):
    """Convolutions of several shapes (the 4-D kernels change layout under channels_last)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.body = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 4)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_initialisation_does_not_depend_on_the_memory_format(scheme):
    contiguous, channels_last = ConvNet(), ConvNet().to(memory_format=torch.channels_last)
    assert channels_last.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    init_weights(contiguous, scheme, generator=gen(3))
    init_weights(channels_last, scheme, generator=gen(3))  # "orthogonal" used to crash here
    a, b = contiguous.state_dict(), channels_last.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the memory format is kept
    assert channels_last.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_weight_init_and_channels_last_give_the_same_weights_in_either_order():
    from lightning_tricks import ChannelsLast

    starts = []
    for callbacks in (
        [ChannelsLast(), WeightInit("orthogonal", seed=0)],
        [WeightInit("orthogonal", seed=0), ChannelsLast()],
    ):
        cap = Capture()
        cpu_trainer(
            max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[*callbacks, cap]
        ).fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule(n_train=16))
        starts.append(cap.start)
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_backbone_frozen_by_freeze_backbone_keeps_its_weights_in_either_order():
    from lightning_tricks import FreezeBackbone

    torch.manual_seed(0)
    built = state_of(ClassifierModule(arch="cnn"))
    reports, starts = [], []
    for first_init in (True, False):
        callbacks = [WeightInit("kaiming_normal", seed=0), FreezeBackbone("backbone")]
        cap = Capture()
        torch.manual_seed(0)
        cpu_trainer(
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=0,
            callbacks=[*(callbacks if first_init else callbacks[::-1]), cap],
        ).fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule(n_train=16))
        reports.append(callbacks[0].report)
        starts.append(cap.start)
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
    backbone = [k for k in built if k.startswith("backbone.")]
    assert all(torch.equal(starts[0][k], built[k]) for k in backbone)  # left as built
    assert not torch.equal(starts[0]["head.2.weight"], built["head.2.weight"])  # the head is initialised
    for report in reports:
        assert sorted(report.frozen) == sorted(backbone) and "head.2.weight" in report.initialized


def test_include_and_exclude_follow_the_naming_rule():
    net = SmallCNN()
    # a class name selects every module of that type; a lone string is one name
    report = init_weights(net, "normal", include="Conv2d", init_norm=False, generator=gen())
    assert sorted(report.initialized) == ["backbone.0.0.weight", "backbone.1.0.weight"]
    report = init_weights(SmallCNN(), "normal", include="backbone", exclude=nn.BatchNorm2d, generator=gen())
    assert sorted(report.initialized) == ["backbone.0.0.weight", "backbone.1.0.weight"]
    # "*" stays within one segment, "**" crosses segments
    report = init_weights(SmallCNN(), "normal", include=["**.0"], init_norm=False, generator=gen())
    assert sorted(report.initialized) == ["backbone.0.0.weight", "backbone.1.0.weight"]
    with pytest.raises(ValueError, match=r"`exclude` names no submodule 'haed'.*did you mean 'head'"):
        init_weights(SmallCNN(), exclude="haed")
