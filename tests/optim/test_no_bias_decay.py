"""NoBiasDecay: the functional groups against the reference recipes, and the mixin through
a real Trainer with the user's own optimizer and scheduler."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from torch import nn

from lightning_tricks import NoBiasDecay
from lightning_tricks.functional import no_bias_decay_groups, no_weight_decay_names, split_by_weight_decay
from tests.helpers import BlockNet, ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer, make_mlp

# --------------------------------------------------------------------------- functional


def add_weight_decay(model, weight_decay=1e-5, skip_list=()):
    """The PyTorch Lightning cheat sheet's recipe."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
    """timm.optim._param_groups.param_groups_weight_decay."""
    no_weight_decay_list = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _ids(groups):
    return [([id(p) for p in g["params"]], g["weight_decay"]) for g in groups]


@pytest.mark.parametrize("make", [make_mlp, SmallCNN, BlockNet])
def test_groups_equal_reference_recipes(make):
    model = make()
    model.backbone[0].requires_grad_(False) if isinstance(model, SmallCNN) else None
    ours = no_bias_decay_groups(model, 0.05)
    assert _ids(ours) == _ids(add_weight_decay(model, 0.05)) == _ids(param_groups_weight_decay(model, 0.05))


def test_model_no_weight_decay_method_is_honoured():
    net = BlockNet()
    net.backbone.embed.no_weight_decay = lambda: {"pos"}
    assert "backbone.embed.pos" in no_weight_decay_names(net)
    ours = no_bias_decay_groups(net, 0.1)
    assert _ids(ours) == _ids(param_groups_weight_decay(net, 0.1, {"backbone.embed.pos"}))


def test_norm_layers_embeddings_globs_and_tied_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.gn = nn.GroupNorm(2, 4)
            self.scale = nn.Parameter(torch.ones(1, 4, 4))
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight  # tied

    net = Net()
    assert no_weight_decay_names(net) == ["gn.weight", "gn.bias"]
    assert no_weight_decay_names(net, embeddings=True, extra="sc*") == [  # `*` within a segment
        "scale",
        "emb.weight",
        "gn.weight",
        "gn.bias",
    ]
    groups = no_bias_decay_groups(net, 0.1)
    assert sum(len(g["params"]) for g in groups) == 4  # the tied weight once


def test_split_keeps_hyperparameters_and_is_idempotent():
    net = SmallCNN()
    group = {"params": list(net.parameters()), "lr": 0.3, "betas": (0.8, 0.9), "weight_decay": 0.1}
    parts = split_by_weight_decay(group, net)
    assert [(p["lr"], p["betas"], p["weight_decay"]) for p in parts] == [
        (0.3, (0.8, 0.9), 0.0),
        (0.3, (0.8, 0.9), 0.1),
    ]
    assert [len(p["params"]) for p in parts] == [5, 3]
    assert [len(split_by_weight_decay(p, net)) for p in parts] == [1, 1]


def test_extra_follows_the_naming_rule():
    """``extra`` goes through the one resolver: ``*`` stays within a segment, ``**``
    crosses segments, module and class names select their parameters, and a name that
    selects nothing is an error (it used to be ignored silently)."""
    net = BlockNet()
    assert "backbone.embed.pos" not in no_weight_decay_names(net)
    assert "backbone.embed.pos" in no_weight_decay_names(net, extra="**.pos")
    assert "backbone.embed.pos" in no_weight_decay_names(net, extra=["backbone.embed.pos"])
    with pytest.raises(ValueError, match=r"`extra` names no parameter or submodule '\*\.pos'"):
        no_weight_decay_names(net, extra="*.pos")  # `*` does not cross the dots any more
    proj = {"backbone.embed.proj.weight"}
    assert proj <= set(no_weight_decay_names(net, extra="backbone.embed"))  # a module: all of its parameters
    assert proj <= set(no_weight_decay_names(net, extra="PatchEmbed"))  # a class name
    with pytest.raises(
        ValueError, match=r"`extra` names no parameter or submodule 'backbone.embd'.*did you mean"
    ):
        no_bias_decay_groups(net, 0.1, extra="backbone.embd")


@pytest.mark.parametrize("make", [make_mlp, SmallCNN, BlockNet])
def test_both_paths_put_the_no_decay_group_first(make):
    net = make()
    whole = no_bias_decay_groups(net, 0.1)
    split = split_by_weight_decay({"params": list(net.parameters()), "weight_decay": 0.1}, net)
    assert [g["weight_decay"] for g in whole] == [g["weight_decay"] for g in split] == [0.0, 0.1]
    assert _ids(whole) == _ids(split)


# --------------------------------------------------------------------------- the mixin


class AdamWOneCycle(NoBiasDecay, ClassifierModule):
    no_decay_extra = ("backbone.embed.pos",)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            [
                {"params": self.backbone.parameters(), "lr": 0.001, "betas": (0.8, 0.95)},
                {"params": self.head.parameters(), "lr": 0.01},
            ],
            weight_decay=0.05,
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.001, 0.01], total_steps=8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SGDPlateau(NoBiasDecay, ClassifierModule):
    pass


def test_user_groups_are_split_and_keep_their_hyperparameters(caplog):
    L.seed_everything(0, verbose=False)
    model = AdamWOneCycle(arch="blocks")
    trainer = cpu_trainer(max_epochs=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=ImageDataModule())
    opt = trainer.optimizers[0]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [
        (g["weight_decay"], g["betas"][1], g["max_lr"], [names[id(p)] for p in g["params"]])
        for g in opt.param_groups
    ]
    assert [g[:3] for g in groups] == [  # no-decay part first, as in parameter_groups()
        (0.0, 0.95, 0.001),
        (0.05, 0.95, 0.001),
        (0.0, 0.999, 0.01),
        (0.05, 0.999, 0.01),
    ]
    assert "backbone.embed.pos" in groups[0][3] and "backbone.embed.proj.weight" in groups[1][3]
    assert not [n for n in groups[1][3] + groups[3][3] if n.endswith("bias") or "norm" in n]
    assert groups[3][3] == ["head.fc.weight"]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 8 and len(sched.get_last_lr()) == 4
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"] != opt.param_groups[2]["lr"]
    msgs = [r.getMessage() for r in caplog.records if "NoBiasDecay" in r.getMessage()]
    n_decay = sum(p.numel() for g in opt.param_groups if g["weight_decay"] for p in g["params"])
    assert len(msgs) == 1 and f"({n_decay:,} parameters)" in msgs[0]


def test_plateau_scheduler_follows_the_split_groups():
    L.seed_everything(0, verbose=False)
    model = SGDPlateau(arch="cnn", scheduler="plateau", weight_decay=0.1)
    trainer = cpu_trainer(max_epochs=3)
    trainer.fit(model, datamodule=ImageDataModule())
    opt = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    assert len(sched.min_lrs) == 2 and len({g["lr"] for g in opt.param_groups}) == 1


def test_explicit_parameter_groups_path():
    class Explicit(NoBiasDecay, ClassifierModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameter_groups(0.01), lr=0.1)

    model = Explicit(arch="mlp")
    opt = model.configure_optimizers()
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(3, 0.0), (3, 0.01)]


def test_bad_class_attribute_names_the_attribute():
    class Bad(NoBiasDecay, ClassifierModule):
        no_decay_embeddings = "yes"

    with pytest.raises(TypeError, match="no_decay_embeddings"):
        Bad(arch="mlp").configure_optimizers()


def test_an_optimizer_over_another_models_parameters_is_reported():
    other = torch.nn.Linear(3, 3)

    class Foreign(NoBiasDecay, ClassifierModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(other.parameters(), lr=0.1, weight_decay=0.05)

    with pytest.warns(UserWarning, match="2 parameters in the optimizer are not parameters of this Foreign"):
        Foreign(arch="mlp").configure_optimizers()


def test_no_decay_extra_is_resolved_and_checked():
    class Typo(NoBiasDecay, ClassifierModule):
        no_decay_extra = "backbone.embed.pso"

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.05)

    with pytest.raises(
        ValueError,
        match=r"`no_decay_extra` names no parameter or submodule 'backbone.embed.pso'.*did you mean",
    ):
        Typo(arch="blocks").configure_optimizers()

    class Glob(Typo):
        no_decay_extra = "**.pos"  # a lone string is one entry

    model = Glob(arch="blocks")
    opt = model.configure_optimizers()
    names = {id(p): n for n, p in model.named_parameters()}
    assert "backbone.embed.pos" in [names[id(p)] for p in opt.param_groups[0]["params"]]
    assert opt.param_groups[0]["weight_decay"] == 0.0
    # the automatic split and the explicit path agree on order and content
    assert _ids(opt.param_groups) == _ids(model.parameter_groups(0.05))
