"""SyncDetector through a real Trainer: silent on clean models, precise on dirty ones."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_tricks import SyncDetector
from lightning_tricks.functional import SyncDetectedError
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


class DirtyModule(ClassifierModule):
    """A training_step with three cheat-sheet mistakes; validation_step has one too."""

    def __init__(self):
        super().__init__(arch="mlp")
        self.wrapped_on = []

    def training_step(self, batch, batch_idx):
        self.wrapped_on.append("training_step" in vars(self))
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        loss_value = loss.item()  # sync 1
        weights = torch.tensor([1.0, 1.0, 1.0, 1.0]).to(self.device)  # cpu-built 2
        confident = logits[logits.softmax(-1).max(-1).values > 0.5]  # sync 3
        self.log("train_loss", loss)
        return loss + 0.0 * (weights.sum() + confident.sum()) + 0.0 * loss_value

    def validation_step(self, batch, batch_idx):
        batch[0].sum().item()  # not inspected: outside training_step
        return super().validation_step(batch, batch_idx)


def _fit(cb, model=None, **trainer_args):
    trainer = cpu_trainer(max_epochs=2, callbacks=[cb], **trainer_args)  # 8 steps
    trainer.fit(model or ClassifierModule(), ImageDataModule())
    return trainer


@pytest.mark.parametrize("arch", ["mlp", "cnn", "blocks"])
def test_clean_models_are_silent(arch):
    cb = SyncDetector(every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(cb, ClassifierModule(arch=arch))
    assert cb.report.total == 0, cb.report.format()
    assert cb.report.blocks == 8
    assert not [w for w in caught if "SyncDetector" in str(w.message)]


def test_warn_mode_reports_each_call_site_once_at_the_end():
    model = DirtyModule()
    cb = SyncDetector(every_n_steps=3)  # steps 0, 3, 6
    with pytest.warns(UserWarning, match="SyncDetector") as caught:
        _fit(cb, model)
    reports = [str(w.message) for w in caught if "SyncDetector" in str(w.message)]
    assert len(reports) == 1
    text = reports[0]
    for line in (
        "loss_value = loss.item()",
        "torch.tensor([1.0, 1.0, 1.0, 1.0]).to(self.device)",
        "confident =",
    ):
        assert line in text
    assert "batch[0].sum().item()" not in text and "self.log" not in text
    assert [f["count"] for f in cb.report.findings] == [3, 3, 3]
    assert {f["kind"] for f in cb.report.findings} == {"sync", "cpu_built"}
    # only the sampled steps were wrapped, and the wrapper is gone after each
    assert model.wrapped_on == [i % 3 == 0 for i in range(8)]
    assert "training_step" not in vars(model)


def test_raise_mode_stops_at_the_first_call_site():
    model = DirtyModule()
    with pytest.raises(SyncDetectedError, match=r"test_sync_detector\.py:\d+ in training_step.*\.item\(\)"):
        _fit(SyncDetector(mode="raise", every_n_steps=1), model)
    assert "training_step" not in vars(model)


def test_count_mode_logs_findings_per_sampled_step_and_does_not_warn():
    cb = SyncDetector(mode="count", every_n_steps=2, start_step=1)  # steps 1, 3, 5, 7
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(cb, DirtyModule())
    assert not [w for w in caught if "SyncDetector" in str(w.message)]
    assert cb.report.blocks == 4 and cb.report.total == 12
    assert trainer.logged_metrics["sync_detector/findings"].item() == 3.0


def test_ignore_and_fit_twice_resets_the_report():
    cb = SyncDetector(mode="count", every_n_steps=4, ignore=["test_sync_detector.py"])
    _fit(cb, DirtyModule())
    _fit(cb, DirtyModule())
    assert cb.report.total == 0 and cb.report.blocks == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mode": "loud"}, "mode"), ({"every_n_steps": 0}, "every_n_steps"), ({"start_step": -1}, "start_step")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SyncDetector(**kwargs)


@pytest.mark.gpu
def test_finds_syncs_on_gpu():
    cb = SyncDetector(mode="count", every_n_steps=1)
    trainer = cpu_trainer(max_epochs=1, accelerator="gpu", devices=1, callbacks=[cb])
    trainer.fit(DirtyModule(), ImageDataModule())
    assert cb.report.total == 12, cb.report.format()
    assert torch.cuda.get_sync_debug_mode() == 0


def test_print_of_a_tensor_in_a_zoo_training_step_is_found():
    from tests.helpers.zoo import HFTextClassifier, zoo_loaders

    class Prints(HFTextClassifier):
        def training_step(self, batch, batch_idx):
            loss = self(**batch).loss
            print(loss)  # the mistake
            return loss

    train, _ = zoo_loaders("bert", n=8, batch_size=8)
    cb = SyncDetector(mode="count", every_n_steps=1)
    cpu_trainer(max_epochs=1, callbacks=[cb]).fit(Prints(), train)
    (finding,) = [f for f in cb.report.findings if f["site"].startswith(__file__)]  # transformers has its own
    assert "print" in finding["what"] and finding["code"] == "print(loss)  # the mistake"
