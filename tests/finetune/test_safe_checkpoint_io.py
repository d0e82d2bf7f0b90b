"""SafeCheckpointIO and its functional core: pickle-free training checkpoints."""

from __future__ import annotations

import contextlib
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_tricks.finetune.safe_checkpoint_io import SafeCheckpointIO, load_from_checkpoint, main
from lightning_tricks.functional.finetune import safe_checkpoint_io as F
from tests.conformance.checks import CrashAt, Interrupt, launch_two_ranks
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer
from tests.helpers.utils import state_diff, whole_state


class _Unpickled(RuntimeError):
    pass


@contextlib.contextmanager
def no_unpickling():
    """Every way to unpickle (pickle.load/loads/Unpickler, torch.load) raises inside."""

    def refuse(*args, **kwargs):
        raise _Unpickled("something tried to unpickle")

    with pytest.MonkeyPatch.context() as mp:
        for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
            mp.setattr(target, name, refuse)
        mp.setattr(torch.serialization, "load", refuse)
        yield


def test_no_unpickling_guard_blocks_torch_load(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.pt")
    with no_unpickling(), pytest.raises(_Unpickled):
        torch.load(tmp_path / "x.pt", weights_only=False)
    with no_unpickling(), pytest.raises(_Unpickled):
        pickle.loads(pickle.dumps(1))


def _same(a, b, path="checkpoint"):
    """Recursive equality that also compares types (dict subclasses other than OrderedDict
    load as dict) and tensors bit for bit (dtype, shape, values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.cpu(), b.cpu()) or (a.isnan() == b.isnan()).all(), path
        return
    if isinstance(a, OrderedDict):
        assert type(b) is OrderedDict, path
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), f"{path}._metadata"
    elif isinstance(a, dict):
        assert isinstance(b, dict), path
    else:
        assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path


def _fp16():
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


# --------------------------------------------------------------------------- functional core


def test_functional_round_trip_of_every_encoding(tmp_path):
    lin = nn.Linear(3, 2)
    sd = lin.state_dict()  # an OrderedDict with `_metadata` (module versions)
    tied = nn.ModuleDict({"enc": nn.Embedding(5, 3), "dec": nn.Linear(3, 5, bias=False)})
    tied["dec"].weight = tied["enc"].weight
    shared = torch.arange(12.0)
    ckpt = {
        "state_dict": sd,
        "tied": {"a": lin.weight, "b": lin.weight},  # the same tensor twice
        "tied_sd": tied.state_dict(),  # two detached entries of one parameter
        "views": [shared[:4], shared[4:], shared.view(3, 4).t()],  # shared storage, non-contiguous
        "ints": {0: {"step": torch.tensor(3.0)}, 1: {}},  # optimizer state: int keys
        "betas": (0.9, 0.999),
        "plateau": {"best": float("inf"), "worse": float("-inf"), "nan": float("nan")},
        "sets": {1, 2},
        "frozen": frozenset({"x"}),
        "blob": b"\x00\xff",
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "dollar": {"$tensor": "not a reference"},
        "bf16": torch.randn(4, dtype=torch.bfloat16),
        "empty": torch.empty(0, 5),
        "none": None,
        "flag": True,
    }
    F.save_checkpoint(ckpt, tmp_path / "a.ckpt")
    back = F.load_checkpoint(tmp_path / "a.ckpt")
    _same(ckpt, back)
    assert back["tied"]["a"] is back["tied"]["b"]
    assert back["tied_sd"]["enc.weight"] is back["tied_sd"]["dec.weight"]  # stored once
    # lin.weight is state_dict/weight already; the tied pair is one tensor
    assert [k for k in F.encode_checkpoint(ckpt)[0] if k.startswith("tied")] == ["tied_sd/enc.weight"]
    assert F.is_safe_checkpoint(tmp_path / "a.ckpt")


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"hyper_parameters": {"loss": nn.MSELoss()}}, "checkpoint['hyper_parameters']['loss']"),
        ({"cb": {"fns": [1, lambda x: x]}}, "checkpoint['cb']['fns'][1]"),
        ({"s": {"k": torch.tensor([1.0]).to_sparse()}}, "checkpoint['s']['k']"),
    ],
)
def test_values_json_cannot_hold_are_refused_naming_the_key_path(tmp_path, value, where):
    F.save_checkpoint({"epoch": 1}, tmp_path / "a.ckpt")
    with pytest.raises(TypeError) as err:
        F.save_checkpoint(value, tmp_path / "a.ckpt")
    assert where in str(err.value)
    assert F.load_checkpoint(tmp_path / "a.ckpt") == {"epoch": 1}  # the previous file is untouched


def test_hparams_object_refused_at_save_time_in_a_trainer(tmp_path):
    class WithModuleHparam(ClassifierModule):
        def __init__(self, loss: nn.Module | None = None):
            super().__init__(arch="mlp")
            self.save_hyperparameters()

    trainer = cpu_trainer(max_epochs=1, limit_train_batches=1, plugins=[SafeCheckpointIO()])
    trainer.fit(WithModuleHparam(loss=nn.CrossEntropyLoss()), datamodule=ImageDataModule())
    with pytest.raises(TypeError, match=r"checkpoint\['hyper_parameters'\]\['loss'\]"):
        trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert not os.listdir(tmp_path)  # nothing half-written, no temporary file left


def test_interrupted_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    F.save_checkpoint({"w": torch.ones(1000), "epoch": 1}, path)
    before = path.read_bytes()
    real = F.st_save_file

    def crash_mid_write(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # half of the new file is on disk, then the process "dies"
            f.truncate(os.path.getsize(filename) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(F, "st_save_file", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        F.save_checkpoint({"w": torch.zeros(1000), "epoch": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert F.load_checkpoint(path)["epoch"] == 1


def test_fsspec_urls_save_load_remove():
    io = SafeCheckpointIO()
    url = "memory://safeckpt-test/run/a.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(3.0)}, "epoch": 4}, url)
    assert F.is_safe_checkpoint(url)
    back = io.load_checkpoint(url)
    assert back["epoch"] == 4 and back["state_dict"]["w"].tolist() == [0.0, 1.0, 2.0]
    io.remove_checkpoint(url)
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(url)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(TypeError, match="allow_pickle"):
        SafeCheckpointIO(allow_pickle="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="storage_options"):
        SafeCheckpointIO().save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})
    with pytest.raises(TypeError, match="map_location"):
        F.load_checkpoint(tmp_path / "a.ckpt", map_location=lambda s, loc: s)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Lightning


def test_whole_training_state_round_trips_with_the_fp16_scaler(tmp_path):
    """Params, buffers, optimizer state (step counters), LR scheduler, callback states, loops,
    hparams and the GradScaler state all come back exactly, with their types."""
    L.seed_everything(0)
    model = ClassifierModule(arch="cnn", optimizer="adamw", scheduler="plateau")  # plateau: inf in its state
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=1)
    trainer = cpu_trainer(
        max_epochs=2,
        limit_train_batches=2,
        plugins=[_fp16(), SafeCheckpointIO()],
        callbacks=[ckpt_cb],
        enable_checkpointing=True,
    )
    trainer.fit(model, datamodule=ImageDataModule())
    dumped = trainer._checkpoint_connector.dump_checkpoint()
    trainer.strategy.checkpoint_io.save_checkpoint(dumped, tmp_path / "state.ckpt")
    with no_unpickling():
        back = SafeCheckpointIO().load_checkpoint(tmp_path / "state.ckpt")
    _same(dumped, back)
    assert back["MixedPrecision"]["scale"] == trainer.precision_plugin.scaler.get_scale()
    assert isinstance(back["optimizer_states"][0]["state"][0]["step"], torch.Tensor)
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["lr_schedulers"][0]["best"] == dumped["lr_schedulers"][0]["best"]
    assert back["hyper_parameters"]["optimizer"] == "adamw"
    assert set(back["callbacks"]) == set(dumped["callbacks"]) and back["loops"]["fit_loop"]
    assert "backbone.1.running_mean" in back["state_dict"] or any("running" in k for k in back["state_dict"])


def _run(tmp: Path, epochs: int, ckpt_path=None, crash_epoch=None):
    L.seed_everything(0)
    model = ClassifierModule(arch="cnn", optimizer="adamw", scheduler="onecycle")
    cbs = [ModelCheckpoint(dirpath=tmp, filename="ep{epoch}", auto_insert_metric_name=False, save_top_k=-1)]
    if crash_epoch is not None:
        cbs.append(CrashAt(crash_epoch))
    trainer = cpu_trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        callbacks=cbs,
        plugins=[_fp16(), SafeCheckpointIO()],
        enable_checkpointing=True,
    )
    trainer.fit(model, datamodule=ImageDataModule(), ckpt_path=ckpt_path)
    return trainer, model


def test_crash_and_resume_is_bitwise_equal_with_pickle_disabled(tmp_path):
    trainer_s, model_s = _run(tmp_path / "s", epochs=3)
    with pytest.raises(Interrupt):
        _run(tmp_path / "c", epochs=3, crash_epoch=2)
    ckpt = tmp_path / "c" / "ep1.ckpt"
    assert F.is_safe_checkpoint(ckpt)
    with no_unpickling():
        trainer_r, model_r = _run(tmp_path / "r", epochs=3, ckpt_path=ckpt)
    ignore = [c for t in (trainer_s, trainer_r) for c in t.callbacks if isinstance(c, ModelCheckpoint)]
    diff = state_diff(whole_state(trainer_s, model_s, ignore), whole_state(trainer_r, model_r, ignore))
    assert not diff, diff[:8]


def test_pickled_checkpoint_refused_unless_opted_in_or_converted(tmp_path, capsys):
    L.seed_everything(0)
    trainer = cpu_trainer(max_epochs=1, limit_train_batches=2)  # the built-in, pickling plugin
    trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule())
    old = tmp_path / "old.ckpt"
    trainer.save_checkpoint(old)

    resume = cpu_trainer(max_epochs=2, limit_train_batches=2, plugins=[SafeCheckpointIO()])
    with (
        no_unpickling(),
        pytest.raises(F.UnsafeCheckpointError, match=r"pickled torch\.save checkpoint") as err,
    ):
        resume.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule(), ckpt_path=old)
    assert "convert" in str(err.value) and "allow_pickle=True" in str(err.value)

    opted_in = cpu_trainer(max_epochs=2, limit_train_batches=2, plugins=[SafeCheckpointIO(allow_pickle=True)])
    opted_in.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule(), ckpt_path=old)
    assert opted_in.global_step == 4

    new = tmp_path / "new.ckpt"
    assert main(["convert", str(old), str(new)]) == 0
    assert main(["check", str(new)]) == 0 and main(["check", str(old)]) == 1
    capsys.readouterr()
    converted = cpu_trainer(max_epochs=2, limit_train_batches=2, plugins=[SafeCheckpointIO()])
    with no_unpickling():
        converted.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule(), ckpt_path=new)
    assert converted.global_step == 4
    assert state_diff(whole_state(opted_in), whole_state(converted)) == []


def test_model_checkpoint_top_k_last_every_n_steps_and_weights_only(tmp_path):
    L.seed_everything(0)
    top = ModelCheckpoint(
        dirpath=tmp_path / "top", monitor="train_loss", save_top_k=2, save_last=True, every_n_train_steps=2
    )
    weights = ModelCheckpoint(dirpath=tmp_path / "w", save_weights_only=True, filename="weights")
    trainer = cpu_trainer(
        max_epochs=3,
        limit_train_batches=2,
        callbacks=[top, weights],
        plugins=[SafeCheckpointIO()],
        enable_checkpointing=True,
    )
    trainer.fit(ClassifierModule(arch="mlp"), datamodule=ImageDataModule())
    files = sorted(os.listdir(tmp_path / "top"))
    assert len(files) == 3 and "last.ckpt" in files, files  # 3 saves; top-2 kept, the rest removed
    assert {os.path.basename(p) for p in top.best_k_models} | {"last.ckpt"} == set(files)
    for name in files:
        assert F.is_safe_checkpoint(tmp_path / "top" / name)
    with no_unpickling():
        last = SafeCheckpointIO().load_checkpoint(tmp_path / "top" / "last.ckpt")
        w = SafeCheckpointIO().load_checkpoint(tmp_path / "w" / "weights.ckpt")
    assert last["global_step"] == 6 and "optimizer_states" in last
    assert "optimizer_states" not in w and w["state_dict"].keys() == last["state_dict"].keys()


def test_load_from_checkpoint_builds_the_module_without_pickle(tmp_path):
    L.seed_everything(0)
    model = ClassifierModule(arch="mlp", lr=0.02)
    trainer = cpu_trainer(max_epochs=1, limit_train_batches=2, plugins=[SafeCheckpointIO()])
    trainer.fit(model, datamodule=ImageDataModule())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    with no_unpickling():
        loaded = load_from_checkpoint(ClassifierModule, tmp_path / "m.ckpt", lr=0.5)
    assert isinstance(loaded, ClassifierModule)
    assert loaded.hparams.arch == "mlp" and loaded.hparams.lr == 0.5  # saved hparams, kwargs override
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # Lightning's own classmethod reads with torch.load and cannot read the file (documented).
    with pytest.raises(pickle.UnpicklingError):
        ClassifierModule.load_from_checkpoint(tmp_path / "m.ckpt")


@pytest.mark.ddp
def test_ddp_fp16_resume_through_safe_checkpoints_with_pickle_disabled(tmp_path):
    """2-process DDP, 16-mixed with a real loss scaler, dropout (ExactResume): a fit stopped after
    one epoch and resumed from its safe `last.ckpt`, with every unpickler patched to raise while
    each rank reads the checkpoint, ends in the straight run's whole state on both ranks."""
    codes = launch_two_ranks(["-m", "tests.helpers.zoo_exactresume", str(tmp_path), "safe"], tmp_path, 240)
    logs = "".join((tmp_path / f"worker{r}.log").read_text()[-2000:] for r in range(2))
    assert codes == [0, 0], logs
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for r in (r0, r1):
        diff = state_diff(r["straight"], r["resumed"])
        assert not diff, diff[:5]
    assert F.is_safe_checkpoint(r0["last"])
    assert any(k.startswith("precision/") for k in r0["resumed"])  # the loss scaler round-tripped too
