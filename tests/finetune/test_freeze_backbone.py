"""FreezeBackbone through a real Trainer."""

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
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


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
    trainable = [e.value for e in acc.Scalars("params/trainable")]
    frozen = [e.value for e in acc.Scalars("params/frozen")]
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
