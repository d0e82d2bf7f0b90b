"""TTAEvaluation through a real Trainer."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks import TTAEvaluation
from lightning_tricks.functional import tta_predict
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


def _scalars(path):
    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tta_evaluation_logs_plain_tta_gain_and_flips(tmp_path):
    torch.manual_seed(0)
    cb = TTAEvaluation(views=["hflip", "vflip", "rot90"], merge="mean")
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    model = ClassifierModule()
    dm = ImageDataModule(n_val=32, batch_size=16)
    trainer = cpu_trainer(max_epochs=2, logger=logger, callbacks=[cb])
    trainer.fit(model, datamodule=dm)
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    logs = _scalars(tmp_path)
    assert len(logs["val_accuracy_plain"]) == 2 and len(logs["val_accuracy_tta"]) == 2
    # recompute the test numbers by hand
    dm.setup()
    x, y = dm.val_set.tensors
    model.eval()
    with torch.no_grad():
        plain = model(x)
    tta = tta_predict(model, x, ["hflip", "vflip", "rot90"])
    ok_p, ok_t = plain.argmax(1) == y, tta.argmax(1) == y
    assert res["test_accuracy_plain"] == pytest.approx(ok_p.float().mean().item(), abs=1e-6)
    assert res["test_accuracy_tta"] == pytest.approx(ok_t.float().mean().item(), abs=1e-6)
    assert res["test_accuracy_tta_gain"] == pytest.approx(
        (ok_t.float().mean() - ok_p.float().mean()).item(), abs=1e-6
    )
    assert res["test_tta_correct_to_wrong"] == pytest.approx((ok_p & ~ok_t).float().mean().item(), abs=1e-6)
    assert res["test_tta_wrong_to_correct"] == pytest.approx((~ok_p & ok_t).float().mean().item(), abs=1e-6)
    assert res["test_accuracy_plain"] == pytest.approx(res["test_acc"], abs=1e-6)  # the model's own metric


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
