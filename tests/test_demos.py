"""The demo models and data that the docs use (``lightning_tricks.demos``)."""

from __future__ import annotations

import pytest
import torch

from lightning_tricks.demos import MODELS, ClassifierModule, ImageDataModule, cpu_trainer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet"}, r"`arch` must be one of 'mlp', 'cnn', 'blocks'; got 'resnet'"),
        ({"optimizer": "adam"}, r"`optimizer` must be one of 'sgd', 'adamw'; got 'adam'"),
        ({"scheduler": "cosine"}, r"`scheduler` must be one of 'none', .*'lambda'; got 'cosine'"),
    ],
)
def test_bad_choices_name_the_argument_and_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierModule(**kwargs)


@pytest.mark.parametrize("arch", list(MODELS))
def test_each_arch_has_backbone_and_head_on_the_module(arch):
    model = ClassifierModule(arch=arch, num_classes=3)
    assert {"backbone", "head"} <= {name for name, _ in model.named_children()}
    assert model(torch.zeros(5, 3, 8, 8)).shape == (5, 3)


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [("none", 0.05), ("step", 0.05 * 0.5**2), ("lambda", 0.05 * 0.9**2), ("onecycle", None)],
)
def test_schedulers_change_the_lr_as_documented(scheduler, expected):
    trainer = cpu_trainer(max_epochs=2, limit_val_batches=1)
    trainer.fit(ClassifierModule(arch="mlp", scheduler=scheduler), ImageDataModule())
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if expected is None:  # one cycle, stepped per batch, spans exactly the whole fit
        sched = trainer.lr_scheduler_configs[0]
        assert (sched.interval, sched.scheduler.total_steps, trainer.global_step) == ("step", 8, 8)
        assert max(g["max_lr"] for g in trainer.optimizers[0].param_groups) == 0.05
    else:
        assert lr == pytest.approx(expected)
