"""ReproducibilityCheck and its functional core (tensor_checksums, first_divergence,
save/load): exact, cheap checksums; a Trainer run that writes them every epoch and names
where it diverges from a reference run; resume."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_tricks import ReproducibilityCheck, ReproducibilityError
from lightning_tricks.functional import (
    first_divergence,
    load_checksums,
    save_checksums,
    tensor_checksums,
)
from tests.conformance.checks import CrashAt, Interrupt
from tests.helpers import ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer

# where ReproducibilityCheck() writes without a logger: <default_root_dir>/reproducibility_check/
SUMS = Path("reproducibility_check", "checksums.json")

# ---------------------------------------------------------------- functional core


def test_one_flipped_bit_changes_the_hash_for_every_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.uint8):
        t = (torch.arange(30) % 7).to(dtype)
        flipped = t.clone()
        raw = flipped.view(torch.uint8)
        raw[5] ^= 1
        a, b = tensor_checksums({"t": t}), tensor_checksums({"t": flipped})
        assert a["t"]["hash"] != b["t"]["hash"], dtype
        assert tensor_checksums({"t": t.clone()})["t"] == a["t"], dtype


def test_hash_depends_on_element_order():
    a = tensor_checksums({"t": torch.tensor([1.0, 2.0, 3.0])})["t"]
    b = tensor_checksums({"t": torch.tensor([3.0, 2.0, 1.0])})["t"]
    assert a["sum"] == b["sum"] and a["hash"] != b["hash"]


def test_module_checksums_cover_parameters_and_optionally_buffers():
    net = SmallCNN()
    params = tensor_checksums(net)
    assert list(params) == [n for n, _ in net.named_parameters()]
    with_buffers = tensor_checksums(net, buffers=True)
    assert set(with_buffers) == set(params) | {n for n, _ in net.named_buffers()}
    w = dict(net.named_parameters())[next(iter(params))]
    assert params[next(iter(params))]["sum"] == pytest.approx(float(w.detach().double().sum()))
    assert params[next(iter(params))]["norm"] == pytest.approx(float(w.detach().double().norm()))


def test_one_device_to_host_transfer_for_all_tensors(monkeypatch):
    calls = []
    original = torch.Tensor.cpu

    def counting_cpu(self, *a, **k):
        calls.append(self.shape)
        return original(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    sums = tensor_checksums(SmallCNN(), buffers=True)
    assert len(calls) == 1 and calls[0][0] == len(sums)


def test_large_tensor_is_hashed_in_chunks_consistently(monkeypatch):
    import lightning_tricks.functional.repro.reproducibility_check as mod

    monkeypatch.setattr(mod, "_BLOCK", 64)
    monkeypatch.setattr(mod, "_cache", {})
    t = torch.randn(1000)  # 15 full blocks and a tail
    whole = tensor_checksums({"t": t})["t"]
    monkeypatch.setattr(mod, "_CHUNK_BLOCKS", 1)
    assert tensor_checksums({"t": t})["t"] == whole
    t[999] += 1  # a change in the tail is seen
    assert tensor_checksums({"t": t})["t"]["hash"] != whole["hash"]


def test_first_divergence_names_first_epoch_and_parameter():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    ref = {0: tensor_checksums(net)}
    with torch.no_grad():
        net[0].weight[0, 0] += 1
    ref[1] = tensor_checksums(net)
    run = {0: ref[0], 1: dict(ref[1])}
    assert first_divergence(run, ref) is None
    with torch.no_grad():
        net[1].bias += 1e-3
    run[1] = tensor_checksums(net)
    run[2] = run[1]  # epochs missing from the reference are not compared
    found = first_divergence(run, ref)
    assert (found.epoch, found.name) == (1, "1.bias")
    assert "bitwise" in found.reason
    assert first_divergence(run, ref, atol=1e-2) is None
    assert first_divergence(run, ref, rtol=1e-9) is not None


def test_shape_and_missing_parameters_are_divergences():
    ref = {0: tensor_checksums({"a": torch.ones(2), "b": torch.ones(2)})}
    assert (
        "shape"
        in first_divergence({0: tensor_checksums({"a": torch.ones(3), "b": torch.ones(2)})}, ref).reason
    )
    missing = first_divergence({0: tensor_checksums({"a": torch.ones(2)})}, ref)
    assert missing.name == "b" and "missing" in missing.reason


def test_save_and_load_round_trip(tmp_path):
    records = {0: tensor_checksums(SmallCNN()), 3: tensor_checksums({"x": torch.zeros(1)})}
    path = tmp_path / "sub" / "c.json"
    save_checksums(path, records)
    assert json.loads(path.read_text())["format"] == "lightning-tricks/checksums"
    assert load_checksums(path) == records
    assert not [p for p in path.parent.iterdir() if p.name != "c.json"]  # no temp files left


def test_bad_input_is_named(tmp_path):
    with pytest.raises(TypeError, match="tensors"):
        tensor_checksums({"a": [1.0]})
    with pytest.raises(TypeError, match="tensors"):
        tensor_checksums(3)
    with pytest.raises(ValueError, match="rtol"):
        first_divergence({}, {}, rtol=-1)
    with pytest.raises(ValueError, match="atol"):
        first_divergence({}, {}, atol=float("nan"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a checksum file"):
        load_checksums(bad)
    bad.write_text('{"format": "lightning-tricks/checksums", "version": 1, "epochs": []}')
    with pytest.raises(ValueError, match="version 1, whose hashes cannot be compared"):
        load_checksums(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checksums(bad)


def _words(*values: int) -> torch.Tensor:
    """float32 tensor with these 32-bit patterns."""
    return torch.tensor(list(values), dtype=torch.int64).to(torch.int32).view(torch.float32)


STRUCTURED_PAIRS = {
    # words differing by exactly 2**31 - 1 (the old modulus): 0.0 vs the bit pattern 0x7FFFFFFF
    "zero_vs_7fffffff": (_words(0, 0, 0), _words(0, 0x7FFFFFFF, 0)),
    "one_vs_80000000": (_words(1, 5), _words(-0x80000000, 5)),  # 1 and 0x80000000 (== -2**31)
    "minus_one_vs_7ffffffe": (_words(-1), _words(0x7FFFFFFE)),  # 0xFFFFFFFF and 0x7FFFFFFE
    "two_words": (_words(0, 0), _words(0x7FFFFFFF, 0x7FFFFFFF)),
    # second differences (+1, -2, +1) cancel for weights linear in the position
    "second_difference": (_words(10, 10, 10, 10), _words(10, 11, 8, 11)),
    "third_difference": (_words(10, 10, 10, 10, 10), _words(10, 11, 7, 13, 9)),
}


@pytest.mark.parametrize("name", list(STRUCTURED_PAIRS))
def test_structured_word_patterns_do_not_collide(name):
    a, b = STRUCTURED_PAIRS[name]
    assert not torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert tensor_checksums({"t": a})["t"]["hash"] != tensor_checksums({"t": b})["t"]["hash"]


def test_every_single_word_change_of_a_long_tensor_changes_the_hash():
    # a change of one 32-bit word by any amount is detected with certainty, at any position
    t = torch.zeros(4096, dtype=torch.int32)
    base = tensor_checksums({"t": t})["t"]["hash"]
    for pos, value in [(0, 0x7FFFFFFF), (1, -1), (4095, -0x80000000), (2048, 0x7FFFFFFF), (17, 1)]:
        changed = t.clone()
        changed[pos] = value
        assert tensor_checksums({"t": changed})["t"]["hash"] != base, (pos, value)


def test_first_divergence_finds_the_first_differing_tensor_despite_equal_sums():
    zero, pattern = STRUCTURED_PAIRS["zero_vs_7fffffff"]  # 0x7FFFFFFF is a NaN
    ref = {0: tensor_checksums({"a": torch.ones(2), "b": zero, "c": torch.ones(1)})}
    run = {0: tensor_checksums({"a": torch.ones(2), "b": pattern, "c": torch.zeros(1)})}
    found = first_divergence(run, ref)
    assert found is not None and (found.epoch, found.name) == (0, "b")


def test_an_equal_hash_with_different_sums_is_still_a_divergence():
    ref = {0: tensor_checksums({"a": torch.ones(2)})}
    run = {0: {"a": {**ref[0]["a"], "sum": 3.0}}}  # as if two different tensors' hashes collided
    found = first_divergence(run, ref)
    assert found is not None and found.name == "a" and "sum" in found.reason


# ---------------------------------------------------------------- the callback


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
    records = load_checksums(tmp_path / SUMS)
    assert sorted(records) == [0, 1, 2]
    assert list(records[2]) == [n for n, _ in model.named_parameters()]
    assert records[2] == tensor_checksums(model)  # the last record is of the final weights
    assert records[0] != records[1]
    assert check.records == records


def test_identical_rerun_passes_and_changed_run_names_first_epoch_and_parameter(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    ref = str(tmp_path / "ref" / SUMS)
    same = ReproducibilityCheck(reference=ref)
    fit(tmp_path / "same", same)
    assert same.divergence is None

    changed = ReproducibilityCheck(reference=ref, on_error="raise")
    with pytest.raises(ReproducibilityError, match=r"epoch 0, parameter 'backbone\.") as err:
        fit(tmp_path / "changed", changed, lr=0.1001)
    assert ref in str(err.value)
    assert sorted(changed.records) == [0]  # stopped at the first divergent epoch


def test_on_error_warn_warns_once_and_keeps_training(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    check = ReproducibilityCheck(reference=str(tmp_path / "ref" / SUMS), on_error="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "run", check, lr=0.2)
    ours = [w for w in caught if "ReproducibilityCheck" in str(w.message)]
    assert len(ours) == 1 and "epoch 0" in str(ours[0].message)
    assert sorted(check.records) == [0, 1, 2]


def test_compare_at_end_and_tolerance(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    ref = str(tmp_path / "ref" / SUMS)
    at_end = ReproducibilityCheck(reference=ref, compare="end", on_error="raise")
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
    assert load_checksums(tmp_path / "resumed" / SUMS) == load_checksums(tmp_path / "straight" / SUMS)


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
        ({"filename": ""}, "filename"),
        ({"dirpath": ""}, "dirpath"),
        ({"dirpath": 3}, "dirpath"),
        ({"reference": 3}, "reference"),
        ({"on_error": "error"}, "on_error"),
        ({"on_error": "count"}, "on_error"),
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
    assert (
        ReproducibilityCheck(filename="a.json").state_key != ReproducibilityCheck(filename="b.json").state_key
    )
    assert ReproducibilityCheck(dirpath="a").state_key != ReproducibilityCheck(dirpath="b").state_key


def test_default_on_error_warns_and_keeps_training(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck(), epochs=2)
    check = ReproducibilityCheck(reference=str(tmp_path / "ref" / SUMS))
    assert check.on_error == "warn"
    with pytest.warns(UserWarning, match=r"ReproducibilityCheck: runs diverge at epoch 0"):
        fit(tmp_path / "run", check, lr=0.2, epochs=2)
    assert sorted(check.records) == [0, 1] and "epoch 0" in check.divergence


def _csv_column(logger: CSVLogger, key: str) -> list[float]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_on_error_ignore_only_records_and_logs_the_divergence(tmp_path):
    fit(tmp_path / "ref", ReproducibilityCheck())
    ref = str(tmp_path / "ref" / SUMS)
    same_logger = CSVLogger(tmp_path / "logs", name="same")
    same = ReproducibilityCheck(reference=ref, on_error="ignore")
    fit(tmp_path / "same", same, logger=same_logger)
    assert _csv_column(same_logger, "reproducibility_check/diverged") == [0.0, 0.0, 0.0]

    logger = CSVLogger(tmp_path / "logs", name="changed")
    check = ReproducibilityCheck(reference=ref, on_error="ignore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "changed", check, lr=0.2, logger=logger)
    assert not [w for w in caught if "ReproducibilityCheck" in str(w.message)]
    assert check.divergence is not None and "epoch 0" in check.divergence
    assert sorted(check.records) == [0, 1, 2]
    assert _csv_column(logger, "reproducibility_check/diverged") == [1.0, 1.0, 1.0]


def test_file_goes_to_dirpath_or_the_log_dir(tmp_path):
    logger = CSVLogger(tmp_path / "logs")
    default = ReproducibilityCheck()
    fit(tmp_path / "root", default, epochs=1, logger=logger)
    expected = Path(logger.log_dir) / "reproducibility_check" / "checksums.json"
    assert default.file == expected and sorted(load_checksums(expected)) == [0]
    assert not (tmp_path / "root" / "checksums.json").exists()

    explicit = ReproducibilityCheck(dirpath=str(tmp_path / "sums"), filename="run.json")
    fit(tmp_path / "root2", explicit, epochs=1, logger=CSVLogger(tmp_path / "logs2"))
    assert explicit.file == tmp_path / "sums" / "run.json"
    assert load_checksums(tmp_path / "sums" / "run.json") == explicit.records
    assert not list((tmp_path / "logs2").rglob("checksums.json"))


def test_reproducibility_error_is_exported_at_top_level():
    import lightning_tricks
    from lightning_tricks.repro import reproducibility_check

    assert "ReproducibilityError" in lightning_tricks.__all__
    assert ReproducibilityError is reproducibility_check.ReproducibilityError
    assert issubclass(ReproducibilityError, RuntimeError)
