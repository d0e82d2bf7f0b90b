"""TTAEvaluation: the functional comparison and the callback through a real Trainer."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import TTAEvaluation, TTAPredict
from lightning_tricks.functional import tta_evaluation, tta_flips, tta_predict
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


def _scalars(path):
    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _csv_columns(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in rows[0]}


KEYS = ["accuracy_plain", "accuracy_tta", "accuracy_gain", "correct_to_wrong", "wrong_to_correct"]


def test_tta_evaluation_logs_plain_tta_gain_and_flips(tmp_path):
    torch.manual_seed(0)
    cb = TTAEvaluation(views=["hflip", "vflip", "rot90"], merge="mean")
    tb = TensorBoardLogger(str(tmp_path), name="", version="")
    csv_logger = CSVLogger(str(tmp_path), name="csv", version=0)
    model = ClassifierModule()
    dm = ImageDataModule(n_val=32, batch_size=16)
    trainer = cpu_trainer(max_epochs=2, logger=[tb, csv_logger], callbacks=[cb])
    trainer.fit(model, datamodule=dm)
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    logs = _scalars(tmp_path)
    assert (
        len(logs["tta_evaluation/val_accuracy_plain"]) == 2
        and len(logs["tta_evaluation/val_accuracy_tta"]) == 2
    )
    # every key reaches the CSV logger too, under tta_evaluation/<stage>_<key>
    columns = _csv_columns(tmp_path / "csv" / "version_0" / "metrics.csv")
    for key in KEYS:
        assert len(columns[f"tta_evaluation/val_{key}"]) == 2, key
        assert columns[f"tta_evaluation/test_{key}"] == [pytest.approx(res[f"tta_evaluation/test_{key}"])], (
            key
        )
    assert not any(
        k.startswith(("val_accuracy", "val_tta", "test_accuracy", "test_tta")) for k in columns
    )  # old keys
    # recompute the test numbers by hand
    dm.setup()
    x, y = dm.val_set.tensors
    model.eval()
    with torch.no_grad():
        plain = model(x)
    tta = tta_predict(model, x, ["hflip", "vflip", "rot90"])
    ok_p, ok_t = plain.argmax(1) == y, tta.argmax(1) == y
    assert res["tta_evaluation/test_accuracy_plain"] == pytest.approx(ok_p.float().mean().item(), abs=1e-6)
    assert res["tta_evaluation/test_accuracy_tta"] == pytest.approx(ok_t.float().mean().item(), abs=1e-6)
    assert res["tta_evaluation/test_accuracy_gain"] == pytest.approx(
        (ok_t.float().mean() - ok_p.float().mean()).item(), abs=1e-6
    )
    assert res["tta_evaluation/test_correct_to_wrong"] == pytest.approx(
        (ok_p & ~ok_t).float().mean().item(), abs=1e-6
    )
    assert res["tta_evaluation/test_wrong_to_correct"] == pytest.approx(
        (~ok_p & ok_t).float().mean().item(), abs=1e-6
    )
    assert res["tta_evaluation/test_accuracy_plain"] == pytest.approx(
        res["test_acc"], abs=1e-6
    )  # the model's own metric


def test_tta_evaluation_does_not_change_training():
    def run(callbacks):
        torch.manual_seed(0)
        model = ClassifierModule()
        cpu_trainer(max_epochs=2, callbacks=callbacks).fit(model, datamodule=ImageDataModule())
        return state_of(model, params_only=False)

    assert not params_equal(run([]), run([TTAEvaluation(views=["hflip", "rot180"], metric="f1")]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"views": ["hflp"]}, "views"),
        ({"merge": "median"}, "merge"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
    ],
)
def test_tta_evaluation_validates(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TTAEvaluation(**kwargs)


def test_early_stopping_monitors_the_gain(tmp_path):
    torch.manual_seed(0)
    stop = EarlyStopping(monitor="tta_evaluation/val_accuracy_gain", mode="max", patience=0, min_delta=1.0)
    trainer = cpu_trainer(
        max_epochs=3, callbacks=[TTAEvaluation(views=["hflip"]), stop], default_root_dir=tmp_path
    )
    trainer.fit(ClassifierModule(), datamodule=ImageDataModule(n_val=16))
    # min_delta=1 can never be reached: the run stops after the second epoch, on the monitored key
    assert trainer.current_epoch == 2 and stop.stopped_epoch == 1
    assert torch.isfinite(stop.best_score)
    assert "tta_evaluation/val_accuracy_gain" in trainer.callback_metrics


# ------------------------------------------------------------------------------ functional core


def test_functional_plain_is_the_model_and_tta_the_merge():
    torch.manual_seed(0)
    model = ClassifierModule().eval()
    x = torch.randn(6, 3, 8, 8)
    plain, tta = tta_evaluation(model, x, ["hflip", "vflip"], "mean_softmax")
    with torch.no_grad():
        torch.testing.assert_close(plain, model(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        tta, tta_predict(model, x, ["hflip", "vflip"], "mean_softmax"), rtol=1e-5, atol=1e-6
    )
    _, no_identity = tta_evaluation(model, x, ["hflip"], include_identity=False)
    torch.testing.assert_close(no_identity, tta_predict(model, x, ["hflip"], include_identity=False))


def test_functional_flips_and_bad_shapes():
    plain = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    tta = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    c2w, w2c = tta_flips(plain, tta, torch.tensor([0, 1, 1, 0]))
    assert c2w.tolist() == [True, False, False, False] and w2c.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="target"):
        tta_flips(plain, tta, torch.tensor([0, 1]))


class LeftOrRight(TTAPredict, ClassifierModule):
    """Says whether the left or the right half of the image is brighter: hflip-TTA (mean of
    softmax) makes both classes equally likely, so TTA visibly changes the predictions."""

    tta_views = ("hflip",)
    tta_merge = "mean_softmax"
    tta_on_test = True

    def forward(self, x):
        w = x.shape[-1] // 2
        d = x[..., :w].mean((1, 2, 3)) - x[..., w:].mean((1, 2, 3))
        return torch.stack([d, -d], 1) * 10


def test_with_tta_predict_on_test_plain_is_plain_and_tta_applied_once():
    # TTAPredict(tta_on_test=True) makes the module's own forward TTA during test; TTAEvaluation
    # must still compare the plain forward with TTA applied once, not TTA with TTA-of-TTA
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    model = LeftOrRight(num_classes=2)
    y = model(x).argmax(1)  # the plain forward is always right
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    cb = TTAEvaluation(views=["vflip"], merge="mean")  # vflip keeps left and right
    res = cpu_trainer(callbacks=[cb]).test(model, dataloaders=loader, verbose=False)[0]
    own = tta_predict(model, x, ["hflip"], "mean_softmax")  # the model's own test metric: its TTA
    own_acc = (own.argmax(1) == y).float().mean().item()
    assert own_acc < 0.9  # the model's TTA does change predictions
    assert res["test_acc"] == pytest.approx(own_acc, abs=1e-6)
    assert res["tta_evaluation/test_accuracy_plain"] == pytest.approx(1.0)
    assert res["tta_evaluation/test_accuracy_tta"] == pytest.approx(1.0)
    assert "forward" not in model.__dict__
