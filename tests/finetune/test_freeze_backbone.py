"""FreezeBackbone through a real Trainer, and its functional core on plain modules
(``lightning_tricks.functional.finetune.freeze_backbone``, ``parameter_counts``)."""

from __future__ import annotations

import contextlib

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_tricks import FreezeBackbone, NoBiasDecay
from lightning_tricks.functional import (
    batchnorm_eval,
    count_parameters,
    freeze_modules,
    select_modules,
    unfreeze_into_optimizer,
    unfreeze_modules,
    unfreeze_units,
)
from tests.helpers import (
    BlockNet,
    ClassifierModule,
    ImageDataModule,
    SmallCNN,
    cpu_trainer,
    params_equal,
    state_of,
)


class NBDModule(NoBiasDecay, ClassifierModule):
    pass


class Probe(Callback):
    """Records, at every train epoch start (after FreezeBackbone), what is trainable."""

    def __init__(self):
        self.trainable, self.groups, self.lrs, self.bn_training = [], [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.trainable.append(sorted(n for n, p in pl_module.named_parameters() if p.requires_grad))
        opt = trainer.optimizers[0]
        self.groups.append([[id(p) for p in g["params"]] for g in opt.param_groups])
        self.lrs.append([g["lr"] for g in opt.param_groups])

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.bn_training.append(
            any(m.training for m in pl_module.backbone.modules() if isinstance(m, _BatchNorm))
        )


def fit(model, callbacks, **kw):
    L.seed_everything(0, verbose=False)
    trainer = cpu_trainer(callbacks=callbacks, **kw)
    trainer.fit(model, datamodule=ImageDataModule())
    return trainer


def make(cls=ClassifierModule, **kw):
    L.seed_everything(0, verbose=False)
    return cls(**kw)


def test_unknown_name_lists_available_submodules():
    with pytest.raises(
        ValueError, match=r"`backbone` names no submodule 'encodr'; available: .*backbone.*head"
    ):
        fit(make(), [FreezeBackbone("encodr")])


def test_frozen_backbone_and_batchnorm_do_not_change():
    model = make(arch="cnn", optimizer="sgd", weight_decay=0.1)
    before = state_of(model, params_only=False)
    probe = Probe()
    fit(model, [FreezeBackbone(), probe], max_epochs=2)
    after = state_of(model, params_only=False)
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert not params_equal({k: before[k] for k in backbone}, {k: after[k] for k in backbone})
    head = [k for k in before if k.startswith("head")]
    assert all(not torch.equal(before[k], after[k]) for k in head)
    assert probe.bn_training and not any(probe.bn_training)  # eval mode although Lightning calls train()


def test_train_bn_updates_running_stats():
    model = make(arch="cnn")
    bn = model.backbone[0][1]
    mean = bn.running_mean.clone()
    fit(model, [FreezeBackbone(train_bn=True)], max_epochs=1)
    assert not torch.equal(mean, bn.running_mean)
    assert not bn.weight.requires_grad


@pytest.mark.parametrize("scheduler", ["lambda", "plateau", "onecycle", "step"])
def test_unfreeze_joins_optimizer_and_schedulers_keep_working(scheduler):
    model = make(arch="cnn", scheduler=scheduler, lr=0.05)
    start = state_of(model)
    probe = Probe()
    trainer = fit(model, [FreezeBackbone(unfreeze_at_epoch=1, backbone_lr_factor=0.5), probe], max_epochs=3)
    end = state_of(model)
    assert all(not torch.equal(start[k], end[k]) for k in start if k.startswith("backbone"))
    opt = trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}  # by identity: both BN weights are all-ones
    assert len(opt.param_groups) == 2
    sched = trainer.lr_scheduler_configs[0].scheduler
    if scheduler == "plateau":
        assert len(sched.min_lrs) == 2
    else:
        assert len(sched.base_lrs) == 2 and len(sched.get_last_lr()) == 2
    # the backbone group follows the head's schedule at half its learning rate
    assert probe.lrs[1][1] == pytest.approx(0.5 * probe.lrs[1][0])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * opt.param_groups[0]["lr"])
    assert probe.lrs[2][0] != probe.lrs[1][0] or scheduler == "plateau"


def test_gradual_unfreezing_from_the_top_and_logging(tmp_path):
    model = make(arch="cnn")
    probe = Probe()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    fit(
        model,
        [FreezeBackbone(unfreeze_at_epoch=1, unfreeze_mode="gradual"), probe],
        max_epochs=4,
        logger=logger,
    )
    top = {n for n, _ in model.named_parameters() if n.startswith("backbone.1.")}
    bottom = {n for n, _ in model.named_parameters() if n.startswith("backbone.0.")}
    head = {n for n, _ in model.named_parameters() if n.startswith("head")}
    assert [set(t) for t in probe.trainable] == [head, head | top, head | top | bottom, head | top | bottom]
    assert [len(g) for g in probe.groups] == [1, 2, 3, 3]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    trainable = [e.value for e in acc.Scalars("freeze_backbone/params_trainable")]
    frozen = [e.value for e in acc.Scalars("freeze_backbone/params_frozen")]
    assert len(trainable) == 3 and trainable == sorted(trainable)
    assert frozen[-1] == 0 and trainable[-1] == sum(p.numel() for p in model.parameters())


def test_frozen_params_already_in_optimizer_are_moved_not_duplicated():
    class AllParams(ClassifierModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)

    model = make(AllParams, arch="mlp")
    start = state_of(model)
    probe = Probe()
    fit(model, [FreezeBackbone(unfreeze_at_epoch=1), probe], max_epochs=2)
    # frozen params had no gradient: no momentum, no weight decay while in the optimizer
    assert probe.lrs[1] == [0.1, pytest.approx(0.01)]
    ids = [i for g in probe.groups[1] for i in g]
    assert len(ids) == len(set(ids)) == len(start)


def _nbd_fit(tmp, ckpt=None, crash=None, epochs=4):
    model = make(NBDModule, arch="cnn", optimizer="adamw", scheduler="onecycle", lr=0.01, weight_decay=0.05)
    cbs = [FreezeBackbone(unfreeze_at_epoch=2, backbone_lr_factor=0.3)]
    cbs.append(
        ModelCheckpoint(dirpath=str(tmp), filename="ep{epoch}", save_top_k=-1, auto_insert_metric_name=False)
    )
    if crash is not None:
        cbs.append(_Crash(crash))
    L.seed_everything(0, verbose=False)
    trainer = cpu_trainer(callbacks=cbs, max_epochs=epochs, enable_checkpointing=True)
    with contextlib.suppress(_Interrupt):
        trainer.fit(model, datamodule=ImageDataModule(), ckpt_path=ckpt)
    return trainer, model


class _Interrupt(RuntimeError):
    pass


class _Crash(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise _Interrupt


def test_no_bias_decay_together_with_freeze_and_resume(tmp_path):
    trainer, straight = _nbd_fit(tmp_path / "s")
    opt = trainer.optimizers[0]
    names = {id(p): n for n, p in straight.named_parameters()}
    groups = [(g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups]
    # head no-decay / head decay, then backbone no-decay / backbone decay (no-decay first)
    assert [wd for wd, _ in groups] == [0.0, 0.05, 0.0, 0.05]
    assert groups[3][1] == ["backbone.0.0.weight", "backbone.1.0.weight"]
    assert all(n.startswith("backbone") and ("bias" in n or ".1." in n[-9:]) for n in groups[2][1])
    assert len(groups[2][1]) == 4  # two BatchNorm weights and biases
    assert opt.param_groups[2]["lr"] == pytest.approx(0.3 * opt.param_groups[0]["lr"])
    assert opt.param_groups[2]["max_lr"] == pytest.approx(0.3 * opt.param_groups[0]["max_lr"])
    for crash in (2, 3):  # checkpoint before the unfreeze epoch, and after it
        _nbd_fit(tmp_path / f"c{crash}", crash=crash)
        _, resumed = _nbd_fit(
            tmp_path / f"r{crash}", ckpt=str(tmp_path / f"c{crash}" / f"ep{crash - 1}.ckpt")
        )
        assert not params_equal(state_of(straight), state_of(resumed)), crash


def test_frozen_params_never_in_decayed_groups():
    class Check(Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            frozen = {id(p) for p in pl_module.parameters() if not p.requires_grad}
            for g in trainer.optimizers[0].param_groups:
                assert not (frozen & {id(p) for p in g["params"]})

    model = make(NBDModule, arch="blocks", optimizer="adamw", weight_decay=0.05)
    trainer = fit(
        model, [FreezeBackbone(unfreeze_at_epoch=1, unfreeze_mode="gradual"), Check()], max_epochs=3
    )
    decayed = {id(p) for g in trainer.optimizers[0].param_groups if g["weight_decay"] for p in g["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in decayed]
    assert "backbone.blocks.1.mlp.0.weight" in names
    assert not [n for n in names if n.endswith("bias") or "norm" in n]
    assert all(p.requires_grad for p in model.parameters())


def test_test_after_fit_does_not_freeze_again():
    model = make()
    trainer = fit(model, [FreezeBackbone(unfreeze_at_epoch=1)], max_epochs=2)
    assert all(p.requires_grad for p in model.backbone.parameters())
    trainer.test(model, datamodule=ImageDataModule(), verbose=False)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_log_parameter_counts_writes_hyperparameters_to_every_logger(tmp_path):
    import yaml
    from lightning.pytorch.loggers import CSVLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_tricks import log_parameter_counts
    from lightning_tricks.functional import freeze_modules

    model = make()
    freeze_modules(model, "backbone")
    csv, tb = CSVLogger(str(tmp_path), name="csv"), TensorBoardLogger(str(tmp_path), name="tb")
    counts = log_parameter_counts(model, [csv, tb])
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    assert counts == {
        "params/total": n_total,
        "params/trainable": n_total - n_backbone,
        "params/frozen": n_backbone,
    }
    csv.save()
    assert yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text()) == counts
    tb.finalize("success")
    acc = EventAccumulator(tb.log_dir)
    acc.Reload()
    # TensorBoard stores hyperparameters as the hparams plugin's session start info
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert {k: int(v.number_value) for k, v in hparams.items()} == counts


class TrainAfterValidation(ClassifierModule):
    """Lightning < 2.2's default: everything back to train mode after validation."""

    def on_validation_model_train(self):
        self.train()


def test_frozen_batchnorm_stays_in_eval_when_validation_sets_train_mode_mid_epoch():
    probe = Probe()
    model = make(TrainAfterValidation)
    fit(model, [FreezeBackbone(), probe], max_epochs=2, val_check_interval=0.5)
    assert probe.bn_training and not any(probe.bn_training)


# ---------------------------------------------------------------- functional core (plain modules)


def test_select_by_path_and_glob_and_unknown_names():
    net = BlockNet(depth=3)
    assert list(select_modules(net, "backbone.blocks.*")) == [f"backbone.blocks.{i}" for i in range(3)]
    assert list(select_modules(net, ["head", "backbone.embed"])) == ["head", "backbone.embed"]
    assert list(select_modules(net, "**.norm1")) == [f"backbone.blocks.{i}.norm1" for i in range(3)]
    with pytest.raises(
        ValueError, match=r"'backbone.blokcs'; available: backbone, backbone.embed, backbone.blocks, head"
    ):
        select_modules(net, "backbone.blokcs")
    with pytest.raises(ValueError, match="'nothing\\*'"):
        select_modules(net, "nothing*")


def test_freeze_then_optimizer_step_changes_nothing_frozen():
    net = SmallCNN()
    frozen = freeze_modules(net, "backbone")
    assert {id(p) for p in frozen} == {id(p) for p in net.backbone.parameters()}
    assert all(not m.training for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.1
    )
    net.head.train()
    net(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone"))
    assert count_parameters(net) == {
        "total": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.head.parameters()),
        "frozen": sum(p.numel() for p in net.backbone.parameters()),
    }
    net.train()
    assert [bn.training for bn in batchnorm_eval([net.backbone])] == [False, False]
    thawed = unfreeze_modules(net, "backbone")
    assert len(thawed) == len(frozen) and all(p.requires_grad for p in net.parameters())


def test_unfreeze_units_top_first():
    net = BlockNet(depth=2)
    units = unfreeze_units([net.backbone.embed, net.backbone.blocks])
    assert units[:2] == [net.backbone.blocks[1], net.backbone.blocks[0]]
    # the patch embedding owns ``pos`` itself: it goes with its last child
    assert any(p is net.backbone.embed.pos for p in units[-1].parameters())


def test_count_parameters_counts_tied_once():
    lin = torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(lin, lin)
    assert count_parameters(net)["total"] == 12
    with pytest.raises(TypeError, match="`model`"):
        count_parameters("not a module")


def test_set_train_mode_keeps_frozen_batchnorm_of_hf_resnet_in_eval():
    import copy

    from lightning_tricks.functional.finetune.freeze_backbone import set_train_mode
    from tests.helpers.zoo import hf_resnet

    net = hf_resnet()
    freeze_modules(net, "resnet.encoder")
    bns = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    frozen = {n for n in bns if n.startswith("resnet.encoder.")}
    assert frozen and frozen != set(bns)
    net.eval()
    for model in (net, copy.deepcopy(net)):  # the mark travels with the module
        assert set_train_mode(model) is model and model.training
        modes = {n: m.training for n, m in model.named_modules() if n in bns}
        assert {n for n, t in modes.items() if not t} == frozen
        set_train_mode(model, False)
        assert not any(m.training for m in model.modules())
    # a frozen BatchNorm's statistics do not move in a train-mode forward pass
    set_train_mode(net)
    stats = {k: v.clone() for k, v in net.state_dict().items() if "resnet.encoder" in k and "running" in k}
    net(pixel_values=torch.randn(4, 3, 32, 32))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())
    unfreeze_modules(net, "resnet.encoder")
    set_train_mode(net)
    assert all(m.training for m in bns.values())
    # train_bn=True: the statistics are meant to update, so nothing is kept in eval
    freeze_modules(net, "resnet.encoder", train_bn=True)
    set_train_mode(net)
    assert all(m.training for m in bns.values())
    with pytest.raises(TypeError, match="`model`"):
        set_train_mode("net")


def test_add_param_groups_during_a_warmup_from_zero():
    """The functional path of a hand-written loop: unfreeze while the head's LR is 0."""
    from lightning_tricks.functional import add_param_groups

    net = SmallCNN()
    freeze_modules(net, "backbone")
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / 4, 1.0))  # 0 at step 0
    new = unfreeze_modules(net, "backbone")
    # lr 0 next to a head at 0 says nothing about the ratio: refused, not kept at 0 for good
    with pytest.raises(ValueError, match="pass `ratio`"):
        add_param_groups(opt, [{"params": new, "lr": 0.0}], [sched])
    with pytest.raises(ValueError, match="`ratio` must be a number > 0"):
        add_param_groups(opt, [{"params": new}], [sched], ratio=0.0)
    assert add_param_groups(opt, [{"params": new}], [sched], ratio=0.25) == [1]
    lrs = []
    for _ in range(5):
        lrs.append([g["lr"] for g in opt.param_groups])
        sched.step()
    assert lrs[0] == [0.0, 0.0]
    assert all(b == pytest.approx(0.25 * h) for h, b in lrs) and lrs[-1][1] == pytest.approx(0.025)


# ---------------------------------------------------------------- issue 13: one voice


def test_counts_are_logged_once_per_change_through_lightning_log(tmp_path):
    """The counts reach a CSVLogger (and callback_metrics) under ``freeze_backbone/...`` keys,
    once per change, exact above float32's 2**24; the callback writes no hyperparameters."""
    import csv
    from pathlib import Path

    import yaml
    from lightning.pytorch.loggers import CSVLogger

    model = make(arch="cnn")
    big = 2**24 + 1  # odd and above 2**24: float32 would round it
    model.backbone[0].register_parameter("unused", torch.nn.Parameter(torch.zeros(big)))
    numel = {k: sum(p.numel() for p in m.parameters()) for k, m in model.named_children()}
    top, bottom = (sum(p.numel() for p in model.backbone[i].parameters()) for i in (1, 0))
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = fit(
        model, [FreezeBackbone(unfreeze_at_epoch=1, unfreeze_mode="gradual")], max_epochs=4, logger=logger
    )
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert not [k for k in rows[0] if k.startswith("params/")]  # one key set, not two

    def logged(key):
        return [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key)]

    head = numel["head"]
    assert logged("freeze_backbone/params_trainable") == [
        (0, head),
        (1, head + top),
        (2, head + top + bottom),
    ]
    assert logged("freeze_backbone/params_frozen") == [(0, top + bottom), (1, bottom), (2, 0)]
    assert bottom > big and (top + bottom) % 2 == 1  # the exact odd count came back
    assert (
        trainer.callback_metrics["freeze_backbone/params_frozen"] == 0
    )  # EarlyStopping/ModelCheckpoint see it
    hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text()) or {}
    assert not [k for k in hparams if str(k).startswith("params/")]


def test_backbone_named_by_class_names():
    model = make(arch="blocks")
    fit(model, [FreezeBackbone(["PatchEmbed", "ResidualBlock"])], max_epochs=1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("head")
    }
    with pytest.raises(
        ValueError, match=r"`backbone` names no submodule 'ResidualBlok'.*did you mean 'ResidualBlock'"
    ):
        fit(make(arch="blocks"), [FreezeBackbone("ResidualBlok")])


def test_functional_names_follow_the_one_rule():
    net = BlockNet(depth=2)
    blocks = [net.backbone.blocks[0], net.backbone.blocks[1]]
    assert list(select_modules(net, "ResidualBlock").values()) == blocks
    assert list(select_modules(net, torch.nn.MultiheadAttention)) == [
        f"backbone.blocks.{i}.attn" for i in (0, 1)
    ]
    frozen = freeze_modules(net, ["PatchEmbed", "ResidualBlock"])
    assert {id(p) for p in frozen} == {id(p) for p in net.backbone.parameters()}
    assert unfreeze_units(net, "backbone.blocks") == unfreeze_units([net.backbone.blocks])
    with pytest.raises(TypeError, match="`modules` must be the root module"):
        unfreeze_units([net.backbone], "blocks")
    assert {id(p) for p in unfreeze_modules(net, "ResidualBlock")} == {
        id(p) for b in blocks for p in b.parameters()
    }


def _frozen_cnn():
    net = SmallCNN()
    freeze_modules(net, "backbone")
    head = list(net.head.parameters())
    stray = net.backbone[0][1].weight  # a frozen parameter someone put in the optimizer anyway
    opt = torch.optim.AdamW(
        [{"params": [head[0]], "weight_decay": 0.05}, {"params": [head[1], stray], "weight_decay": 0.0}],
        lr=0.1,
    )
    return net, opt, stray


def test_unfreeze_into_optimizer_moves_splits_and_keeps_schedules():
    from lightning_tricks.functional import split_by_weight_decay

    net, opt, stray = _frozen_cnn()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    opt.step()
    sched.step()
    thawed = unfreeze_into_optimizer(
        net, "backbone", opt, [sched], lr_factor=0.2, split=lambda g: split_by_weight_decay(g, net)
    )
    assert {id(p) for p in thawed} == {id(p) for p in net.backbone.parameters()}
    assert all(p.requires_grad for p in net.parameters())
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))  # the stray one moved, not duplicated
    assert all(p is not stray for p in opt.param_groups[1]["params"])
    # the new groups copy the head's decayed group (largest weight decay), split no-decay first
    assert [g["weight_decay"] for g in opt.param_groups[2:]] == [0.0, 0.05]
    assert {id(p) for p in opt.param_groups[3]["params"]} == {id(net.backbone[i][0].weight) for i in (0, 1)}
    assert len(sched.base_lrs) == len(opt.param_groups) == 4
    opt.step()
    sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(0.025) and lrs[2:] == [pytest.approx(0.2 * 0.025)] * 2


def test_unfreeze_into_optimizer_checks_before_changing_anything():
    net, opt, _ = _frozen_cnn()
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]

    def unchanged():
        return not any(p.requires_grad for p in net.backbone.parameters()) and groups == [
            [id(p) for p in g["params"]] for g in opt.param_groups
        ]

    with pytest.raises(TypeError, match="`schedulers` contains a object"):
        unfreeze_into_optimizer(net, "backbone", opt, [object()])
    assert unchanged()
    for g in opt.param_groups:
        g["lr"] = 0.0  # at 0 with no schedule: `lr` cannot be a ratio
    with pytest.raises(ValueError, match=r"`lr`=0\.01 cannot follow"):
        unfreeze_into_optimizer(net, "backbone", opt, lr=0.01)
    with pytest.raises(ValueError, match="`lr_factor`"):
        unfreeze_into_optimizer(net, "backbone", opt, lr_factor=0.0)
    with pytest.raises(ValueError, match="`modules` names no submodule 'backbon'"):
        unfreeze_into_optimizer(net, "backbon", opt)
    assert unchanged()
    # without an optimizer it only unfreezes; the units of gradual unfreezing are accepted as modules
    units = unfreeze_units([net.backbone])
    assert {id(p) for p in unfreeze_into_optimizer(net, units[0])} == {
        id(p) for p in net.backbone[1].parameters()
    }
