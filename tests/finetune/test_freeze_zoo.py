"""FreezeBackbone and the freeze functional core on models we did not write (HF zoo)."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_tricks import FreezeBackbone, NoBiasDecay
from lightning_tricks.functional import freeze_modules, unfreeze_units
from tests.helpers import cpu_trainer
from tests.helpers.zoo import HFImageClassifier, hf_resnet, zoo_loaders, zoo_module

BACKBONE = {"resnet": "model.resnet", "vit": "model.vit", "bert": "model.bert"}


def _fit(model, callbacks, name="resnet", **kw):
    train, _ = zoo_loaders(name, n=16, batch_size=8)  # two batches per epoch
    trainer = cpu_trainer(callbacks=callbacks, limit_val_batches=0, **kw)
    trainer.fit(model, train)
    return trainer


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=False).items()}


# --------------------------------------------------------------------------- defect 2


class ScheduledResNet(HFImageClassifier):
    """HF ResNet whose optimizer steps an HF schedule every step (``interval="step"``)."""

    def __init__(self, schedule: str):
        super().__init__("resnet", lr=0.05)
        self.schedule = schedule

    def configure_optimizers(self):
        from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

        opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr, momentum=0.9)
        if self.schedule == "warmup":  # 0 at step 0, peak at step 2, 0 again at step 8
            sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=8)
        else:  # a cosine over one epoch (2 steps): 0 exactly at the end of epoch 0, then up again
            sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class NBDScheduledResNet(NoBiasDecay, HFImageClassifier):
    """AdamW with weight decay, the warm-up from 0 and ``NoBiasDecay`` (which splits the
    unfrozen groups into decay and no-decay parts)."""

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.05)
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LRProbe(Callback):
    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, *args):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize(
    ("schedule", "at_epoch", "kwargs", "ratio"),
    [
        ("warmup", 0, {"backbone_lr_factor": 0.5}, 0.5),
        ("cosine", 1, {"backbone_lr_factor": 0.5}, 0.5),
        ("warmup", 0, {"backbone_lr": 0.01}, 0.01 / 0.05),  # relative to the head's base LR
        ("nbd", 0, {"backbone_lr_factor": 0.5}, 0.5),  # the unfrozen groups split by NoBiasDecay
    ],
)
def test_unfreezing_while_the_head_lr_is_zero_follows_the_head_schedule(schedule, at_epoch, kwargs, ratio):
    L.seed_everything(0, verbose=False)
    model = ScheduledResNet(schedule) if schedule != "nbd" else NBDScheduledResNet("resnet")
    before = _snapshot(model.model.resnet)
    probe = LRProbe()
    cb = FreezeBackbone("model.resnet", unfreeze_at_epoch=at_epoch, **kwargs)
    trainer = _fit(model, [cb, probe], max_epochs=2)
    opt = trainer.optimizers[0]
    heads = 2 if schedule == "nbd" else 1  # NoBiasDecay: decay and no-decay groups
    assert len(opt.param_groups) == 2 * heads
    first = at_epoch * 2  # the step at which the backbone joined
    assert set(probe.lrs[first]) == {0.0}  # the head's LR was 0 when the backbone was unfrozen
    for lrs in probe.lrs[first:]:
        assert lrs[heads:] == pytest.approx([ratio * lrs[0]] * heads, abs=1e-12)
    assert any(lrs[-1] > 0 for lrs in probe.lrs[first:])
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.base_lrs == pytest.approx([0.05] * heads + [ratio * 0.05] * heads)
    after = model.model.resnet.state_dict()
    changed = [k for k, v in before.items() if k.endswith("weight") and not torch.equal(v, after[k])]
    assert len(changed) == sum(1 for k in before if k.endswith("weight"))  # every backbone weight trained


# --------------------------------------------------------------------------- defect 3


def test_gradual_units_of_hf_resnet_all_hold_parameters():
    resnet = hf_resnet().resnet  # embedder, encoder, pooler (an AdaptiveAvgPool2d: no parameters)
    units = unfreeze_units([resnet])
    assert all(any(True for _ in u.parameters()) for u in units)
    # the parameter-free pooler is unfrozen together with the next unit, nothing is lost
    assert any(m is resnet.pooler for m in units[0].modules())
    assert {id(p) for u in units for p in u.parameters()} == {id(p) for p in resnet.parameters()}
    assert len(units) == 2


# --------------------------------------------------------------------------- defect 4


@pytest.mark.parametrize("backbone", ["model", ["model.resnet", "model.classifier"], "**"])
def test_backbone_covering_the_whole_model_is_refused_in_setup(backbone):
    model = zoo_module("resnet")
    with pytest.raises(ValueError, match=r"`backbone`=.*covers every trainable parameter"):
        _fit(model, [FreezeBackbone(backbone)], max_epochs=1)
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen


# --------------------------------------------------------------------------- exactness on the zoo


class Exactness(Callback):
    """Per epoch: which parameters were trainable, the state before and after, BN modes."""

    def __init__(self):
        self.trainable, self.start, self.end, self.bn_train = [], [], [], []

    def on_train_epoch_start(self, trainer, pl_module):  # runs after FreezeBackbone's hook
        self.trainable.append({n for n, p in pl_module.named_parameters() if p.requires_grad})
        self.start.append(_snapshot(pl_module))
        self.bn_train.append(set())

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.bn_train[-1] |= {
            n for n, m in pl_module.named_modules() if isinstance(m, _BatchNorm) and m.training
        }

    def on_train_epoch_end(self, trainer, pl_module):
        self.end.append(_snapshot(pl_module))


@pytest.mark.parametrize("mode", ["all", "gradual"])
@pytest.mark.parametrize("name", ["resnet", "vit", "bert"])
def test_freeze_unfreeze_exact_on_zoo(name, mode):
    L.seed_everything(0, verbose=False)
    model = zoo_module(name, optimizer="adamw", lr=1e-3)  # Adam: every trained tensor moves
    prefix = BACKBONE[name] + "."
    backbone = {n for n, _ in model.named_parameters() if n.startswith(prefix)}
    units = len(unfreeze_units([model.get_submodule(BACKBONE[name])])) if mode == "gradual" else 1
    probe = Exactness()
    _fit(
        model,
        [FreezeBackbone(BACKBONE[name], unfreeze_at_epoch=1, unfreeze_mode=mode), probe],
        name,
        max_epochs=1 + units,
    )
    assert probe.trainable[0].isdisjoint(backbone)
    counts = [len(t & backbone) for t in probe.trainable]
    assert all(b > a for a, b in itertools.pairwise(counts))  # every epoch unfreezes parameters
    assert probe.trainable[-1] == {n for n, _ in model.named_parameters()}
    bns = {n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    for epoch, trainable in enumerate(probe.trainable):
        start, end = probe.start[epoch], probe.end[epoch]
        frozen_params = backbone - trainable
        # frozen parameters are bitwise unchanged while frozen; the trainable ones all train
        assert all(torch.equal(start[n], end[n]) for n in frozen_params), epoch
        assert all(not torch.equal(start[n], end[n]) for n in trainable), epoch
        # BatchNorm in the frozen part: eval mode, running statistics unchanged
        frozen_bns = {b for b in bns if f"{b}.weight" in frozen_params}
        assert not (frozen_bns & probe.bn_train[epoch]), epoch
        for b in frozen_bns:
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                assert torch.equal(start[f"{b}.{buf}"], end[f"{b}.{buf}"]), (epoch, b)
        assert (bns - frozen_bns) <= probe.bn_train[epoch]  # the others do train
    if name == "resnet":
        assert bns and probe.bn_train[0] == set() and probe.bn_train[-1] == bns
    assert not math.isnan(float(sum(v.float().sum() for v in probe.end[-1].values())))


# --------------------------------------------------------------------------- defect 25


def test_pytorch_lightning_namespace_trainer_unfreezes():
    pl = pytest.importorskip("pytorch_lightning")
    import torch.nn.functional as F

    class PLResNet(pl.LightningModule):  # the standalone package's LightningModule
        def __init__(self):
            super().__init__()
            self.model = hf_resnet()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(pixel_values=x).logits, y)

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05, momentum=0.9)

    pl.seed_everything(0, verbose=False)
    model = PLResNet()
    stem = model.model.resnet.embedder.embedder.normalization
    start = _snapshot(model.model.resnet)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FreezeBackbone("model.resnet", unfreeze_at_epoch=1)],
    )
    trainer.fit(model, zoo_loaders("resnet", n=16, batch_size=8)[0])
    assert all(p.requires_grad for p in model.parameters())
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    end = model.model.resnet.state_dict()
    assert not torch.equal(
        start["embedder.embedder.convolution.weight"], end["embedder.embedder.convolution.weight"]
    )
    assert stem.training  # its BatchNorm trains again after unfreezing


# --------------------------------------------------------------------------- defect 26


def test_fabric_example_loop_keeps_frozen_batchnorm_statistics():
    from lightning.fabric import Fabric

    from examples.fabric.train_fabric import train_epochs

    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.seed_everything(0)
    net = zoo_module("resnet")
    freeze_modules(net, "model.resnet")
    before = _snapshot(net.model.resnet)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    model, optimizer = fabric.setup(net, opt)
    train, _ = zoo_loaders("resnet", n=16, batch_size=8)
    train_epochs(fabric, model, optimizer, fabric.setup_dataloaders(train), epochs=2, limit=2)
    after = net.model.resnet.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in before)
