"""ReproducibilityCheck through a real Trainer: file per epoch, divergence naming, resume."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_tricks import ReproducibilityCheck
from lightning_tricks.functional import load_checksums, tensor_checksums
from lightning_tricks.repro.reproducibility_check import ReproducibilityError
from tests.conformance.checks import CrashAt, Interrupt
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


def fit(root, check, *, lr=0.1, epochs=3, extra=(), ckpt_path=None, **trainer_args):
    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="mlp", lr=lr)
    trainer = cpu_trainer(
        max_epochs=epochs, callbacks=[check, *extra], default_root_dir=str(root), **trainer_args
    )
    trainer.fit(model, datamodule=ImageDataModule(), ckpt_path=ckpt_path)
    return model


def test_writes_checksums_of_every_parameter_every_epoch(tmp_path):
    check = ReproducibilityCheck()
    model = fit(tmp_path, check)
    records = load_checksums(tmp_path / "checksums.json")
    assert sorted(records) == [0, 1, 2]
    assert list(records[2]) == [n for n, _ in model.named_parameters()]
    assert records[2] == tensor_checksums(model)  # the last record is of the final weights
    assert records[0] != records[1]
    assert check.records == records


def test_identical_rerun_passes_and_changed_run_names_first_epoch_and_parameter(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    ref = str(tmp_path / "ref" / "checksums.json")
    same = ReproducibilityCheck(reference=ref)
    fit(tmp_path / "same", same)
    assert same.divergence is None

    changed = ReproducibilityCheck(reference=ref)
    with pytest.raises(ReproducibilityError, match=r"epoch 0, parameter 'backbone\.") as err:
        fit(tmp_path / "changed", changed, lr=0.1001)
    assert ref in str(err.value)
    assert sorted(changed.records) == [0]  # stopped at the first divergent epoch


def test_warn_mode_warns_once_and_keeps_training(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    check = ReproducibilityCheck(reference=str(tmp_path / "ref" / "checksums.json"), mode="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "run", check, lr=0.2)
    ours = [w for w in caught if "ReproducibilityCheck" in str(w.message)]
    assert len(ours) == 1 and "epoch 0" in str(ours[0].message)
    assert sorted(check.records) == [0, 1, 2]


def test_compare_at_end_and_tolerance(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    ref = str(tmp_path / "ref" / "checksums.json")
    at_end = ReproducibilityCheck(reference=ref, compare="end")
    with pytest.raises(ReproducibilityError, match="epoch 0"):
        fit(tmp_path / "end", at_end, lr=0.1001)
    assert sorted(at_end.records) == [0, 1, 2]  # all epochs ran before the comparison
    loose = ReproducibilityCheck(reference=ref, rtol=0.5, atol=1.0)
    fit(tmp_path / "loose", loose, lr=0.1001)
    assert loose.divergence is None


@pytest.mark.parametrize("save_on_train_epoch_end", [True, False])
def test_resume_keeps_the_history(tmp_path, save_on_train_epoch_end):
    # Saved at validation end, the checkpoint lacks the last epoch (recorded later, at
    # train epoch end): the resumed run must fill it in from the restored weights.
    def ckpt(d):
        return ModelCheckpoint(
            dirpath=str(d),
            filename="ep{epoch}",
            auto_insert_metric_name=False,
            save_top_k=-1,
            save_on_train_epoch_end=save_on_train_epoch_end,
        )

    straight = ReproducibilityCheck()
    fit(tmp_path / "straight", straight, epochs=4, extra=[ckpt(tmp_path / "cs")], enable_checkpointing=True)
    with pytest.raises(Interrupt):
        fit(
            tmp_path / "crash",
            ReproducibilityCheck(),
            epochs=4,
            extra=[ckpt(tmp_path / "cc"), CrashAt(2)],
            enable_checkpointing=True,
        )
    path = tmp_path / "cc" / "ep1.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("ReproducibilityCheck"))
    assert sorted(state["records"]) == ([0, 1] if save_on_train_epoch_end else [0])
    resumed = ReproducibilityCheck()
    fit(tmp_path / "resumed", resumed, epochs=4, ckpt_path=str(path))
    assert resumed.records == straight.records
    assert load_checksums(tmp_path / "resumed" / "checksums.json") == load_checksums(
        tmp_path / "straight" / "checksums.json"
    )


def test_second_fit_starts_a_new_history(tmp_path):
    check = ReproducibilityCheck()
    fit(tmp_path / "a", check, epochs=2)
    fit(tmp_path / "b", check, epochs=1)
    assert sorted(check.records) == [0]


def test_missing_reference_fails_at_setup(tmp_path):
    with pytest.raises(FileNotFoundError, match="reference"):
        fit(tmp_path, ReproducibilityCheck(reference=str(tmp_path / "nope.json")), epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"path": ""}, "path"),
        ({"reference": 3}, "reference"),
        ({"mode": "error"}, "mode"),
        ({"compare": "always"}, "compare"),
        ({"rtol": -1.0}, "rtol"),
        ({"atol": float("inf")}, "atol"),
        ({"buffers": "no"}, "buffers"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        ReproducibilityCheck(**kwargs)


def test_state_key_distinguishes_instances():
    assert ReproducibilityCheck(path="a.json").state_key != ReproducibilityCheck(path="b.json").state_key
