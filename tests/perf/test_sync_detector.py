"""SyncDetector and detect_syncs: what is recognised on plain tensors, what is left alone, where it
points; through a real Trainer: silent on clean models, precise on dirty ones."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from lightning_tricks import SyncDetector
from lightning_tricks.functional import SyncDetectedError, SyncReport, detect_syncs
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer

# detect_syncs warns by default; the tests check findings through the report
pytestmark = pytest.mark.filterwarnings("ignore:detect_syncs")

X = torch.randn(8)

PATTERNS = {
    "item": lambda: X.sum().item(),
    "bool": lambda: bool(X.sum() > 0),
    "if": lambda: 1 if X.mean() > 0 else 0,
    "int": lambda: int(X.argmax()),
    "float": lambda: float(X[0]),
    "fstring": lambda: f"{X.sum():.2f}",
    "tolist": lambda: X.tolist(),
    "numpy": lambda: X.numpy(),
    "cpu": lambda: X.cpu(),
    "mask_index": lambda: X[X > 0],
    "mask_assign": lambda: X.clone().__setitem__(X < 0, 0.0),
    "masked_select": lambda: X.masked_select(X > 0),
    "where_one_arg": lambda: torch.where(X > 0),
    "nonzero": lambda: X.nonzero(),
    "unique": lambda: X.unique(),
    "bincount": lambda: torch.bincount(torch.arange(4)),
    "equal": lambda: torch.equal(X, X),
    "repeat_interleave": lambda: torch.arange(3).repeat_interleave(torch.full((3,), 2)),
    "tensor_to": lambda: torch.tensor([1.0, 2.0]).to(X),
    "zeros_to_device": lambda: torch.zeros(3).to("cpu"),
    "arange_type_as": lambda: torch.arange(3).type_as(X),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_each_pattern_is_found_once_at_the_callers_line(name):
    with detect_syncs(device="cpu") as report:
        PATTERNS[name]()
    assert report.total == 1, report.format()
    finding = report.findings[0]
    assert finding["site"].startswith(__file__ + ":")
    assert finding["code"].startswith(f'"{name}"')  # the source line of the lambda
    assert finding["kind"] == ("cpu_built" if name.endswith(("_to", "to_device", "type_as")) else "sync")


def test_clean_training_code_is_silent():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    head = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    x, y = torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 2, 3])  # built outside: not reported
    with detect_syncs(device="cpu") as report:
        logits = model(x)[:, :4]
        loss = F.cross_entropy(logits, y) + 0.5 * logits.pow(2).mean()
        noise = torch.randn(4, 4, device=x.device)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        loss = loss + torch.where(mask, logits, noise).sum() * 0.0
        head(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
        loss.backward()
    assert report.total == 0, report.format()


def test_findings_aggregate_per_site_across_blocks_and_name_the_line():
    report = SyncReport()
    for _ in range(3):
        with detect_syncs(report):
            X.sum().item()  # the line reported
    assert report.blocks == 3 and report.total == 3 and len(report.findings) == 1
    text = report.format()
    assert "X.sum().item()  # the line reported" in text and "(x3)" in text


def test_on_error_raise_names_the_call_site():
    match = r"test_sync_detector\.py:\d+.*\.item\(\)"
    with pytest.raises(SyncDetectedError, match=match), detect_syncs(on_error="raise"):
        X.sum().item()


def test_on_error_warn_warns_once_per_block_with_its_call_sites_and_ignore_only_records():
    report = SyncReport()
    with pytest.warns(UserWarning, match="detect_syncs") as caught, detect_syncs(report):
        for _ in range(2):
            X.sum().item()  # first site
        X[X > 0]  # second site
    assert len(caught) == 1
    text = str(caught[0].message)
    assert caught[0].filename == __file__  # points at the with statement, not at contextlib
    assert "# first site" in text and "(x2)" in text and "# second site" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with detect_syncs(report, on_error="ignore"):
            X.sum().item()
        with detect_syncs(report):  # a clean block does not warn
            X.sum()
    assert report.total == 4 and report.blocks == 3


def test_ignore_skips_matching_call_sites():
    with detect_syncs(ignore=["test_sync_detector.py"]) as report:
        X.sum().item()
    assert report.total == 0


def test_modes_are_gone_after_the_block():
    with detect_syncs() as report:
        pass
    X.sum().item()
    assert report.total == 0 and report.format() == ""


def test_cuda_sync_debug_mode_is_scoped_and_restored(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: calls.append(mode))
    with detect_syncs(device="cuda"):
        assert calls == ["warn"]
    assert calls == ["warn", 1]
    with pytest.raises(ZeroDivisionError), detect_syncs(device="cuda", on_error="raise"):
        1 / 0  # noqa: B018
    assert calls[-2:] == ["error", 1]
    calls.clear()
    with detect_syncs(device="cuda", cuda_sync_debug=False):
        pass
    assert calls == []


def test_detect_syncs_bad_arguments_name_themselves():
    with (
        pytest.raises(ValueError, match=r"`on_error`.*'warn', 'raise', 'ignore'"),
        detect_syncs(on_error="yes"),
    ):
        pass
    with pytest.raises(TypeError, match="cuda_sync_debug"), detect_syncs(cuda_sync_debug="yes"):
        pass
    with pytest.raises(TypeError, match="ignore"), detect_syncs(ignore=[3]):
        pass


@pytest.mark.gpu
def test_real_cuda_syncs_are_found_and_mode_restored():
    x = torch.randn(64, device="cuda")
    before = torch.cuda.get_sync_debug_mode()
    with pytest.warns(UserWarning, match="synchroniz"), detect_syncs(device="cuda") as report:
        x.sum().item()
        x[x > 0]
        torch.zeros(3).to("cuda")
        x.to("cpu")
    assert torch.cuda.get_sync_debug_mode() == before
    kinds = [f["what"] for f in report.findings]
    assert report.total == 4, report.format()
    assert any("device-to-host" in w for w in kinds) and any("built on the CPU" in w for w in kinds)


@pytest.mark.parametrize("how", ["print", "str", "repr"])
def test_print_and_str_of_a_tensor_are_found(how, capsys):
    with detect_syncs(device="cpu") as report:
        if how == "print":
            print(X.sum())
        elif how == "str":
            str(X.sum())
        else:
            repr(X.sum())
    assert report.total == 1, report.format()
    assert "print" in report.findings[0]["what"] and report.findings[0]["code"].startswith(how)


# ---------------------------------------------------------------- the callback


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
        _fit(SyncDetector(on_error="raise", every_n_steps=1), model)
    assert "training_step" not in vars(model)


def test_ignore_logs_findings_per_sampled_step_and_does_not_warn(tmp_path):
    cb = SyncDetector(on_error="ignore", every_n_steps=2, start_step=1)  # steps 1, 3, 5, 7
    logger = CSVLogger(tmp_path, name="run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(cb, DirtyModule(), logger=logger, log_every_n_steps=1)
    assert not [w for w in caught if "SyncDetector" in str(w.message) or "detect_syncs" in str(w.message)]
    assert cb.report.blocks == 4 and cb.report.total == 12
    assert trainer.logged_metrics["sync_detector/findings"].item() == 3.0
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {
        int(r["step"]): float(r["sync_detector/findings"]) for r in rows if r.get("sync_detector/findings")
    }
    assert logged and set(logged.values()) == {3.0}  # 3 findings on each inspected step


def test_warn_mode_logs_zero_findings_on_a_clean_model(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    _fit(SyncDetector(every_n_steps=4), logger=logger, log_every_n_steps=1)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {
        int(r["step"]): float(r["sync_detector/findings"]) for r in rows if r.get("sync_detector/findings")
    }
    assert logged and set(logged.values()) == {0.0}


def test_ignore_and_fit_twice_resets_the_report():
    cb = SyncDetector(on_error="ignore", every_n_steps=4, ignore=["test_sync_detector.py"])
    _fit(cb, DirtyModule())
    _fit(cb, DirtyModule())
    assert cb.report.total == 0 and cb.report.blocks == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_error": "loud"}, "on_error"),
        ({"on_error": "count"}, "on_error"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"start_step": -1}, "start_step"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SyncDetector(**kwargs)


@pytest.mark.gpu
def test_finds_syncs_on_gpu():
    cb = SyncDetector(on_error="ignore", every_n_steps=1)
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
    cb = SyncDetector(on_error="ignore", every_n_steps=1)
    cpu_trainer(max_epochs=1, callbacks=[cb]).fit(Prints(), train)
    (finding,) = [f for f in cb.report.findings if f["site"].startswith(__file__)]  # transformers has its own
    assert "print" in finding["what"] and finding["code"] == "print(loss)  # the mistake"
