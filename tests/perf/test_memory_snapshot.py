"""MemorySnapshot: the CPU profile path end to end, the CUDA path's windows and files with
``torch.cuda.memory`` monkeypatched, and the real thing on a GPU."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import lightning_tricks.perf.memory_snapshot as layer
from lightning_tricks import MemorySnapshot
from lightning_tricks.functional import MemoryWindow
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


def _fit(cb, model=None, **trainer_args):
    trainer_args.setdefault("max_epochs", 2)  # 8 steps
    trainer = cpu_trainer(callbacks=[cb], **trainer_args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*CUDA memory snapshots need a GPU.*")
        trainer.fit(model or ClassifierModule(arch="mlp"), ImageDataModule())
    return trainer


def _names(cb):
    return sorted(p.name for p in cb.files)


def test_window_logic():
    w = MemoryWindow(start_step=3, num_steps=2)
    assert [s for s in range(20) if w.contains(s)] == [3, 4]
    w = MemoryWindow(start_step=0, num_steps=1, every_n_steps=4)
    assert [s for s in range(10) if w.starts_at(s)] == [0, 4, 8]
    with pytest.raises(ValueError, match="every_n_steps"):
        MemoryWindow(start_step=0, num_steps=3, every_n_steps=2)


def test_cpu_profile_end_to_end(tmp_path):
    cb = MemorySnapshot(start_step=2, num_steps=3, dirpath=str(tmp_path))
    with pytest.warns(UserWarning, match="CUDA memory snapshots need a GPU"):
        cpu_trainer(max_epochs=2, callbacks=[cb]).fit(ClassifierModule(arch="mlp"), ImageDataModule())
    stem = "memory_profile_rank0_step4"
    assert _names(cb) == [f"{stem}.html", f"{stem}.pickle", f"{stem}.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == _names(cb)  # no temporary files left
    table = (tmp_path / f"{stem}.txt").read_text()
    assert "aten::addmm" in table and "CPU Mem" in table
    with open(tmp_path / f"{stem}.pickle", "rb") as f:
        snapshot = pickle.load(f)
    assert snapshot["device_traces"] and any(e["action"] == "alloc" for e in snapshot["device_traces"][0])
    assert "snapshot.pickle" in (tmp_path / f"{stem}.html").read_text()


def test_cpu_windows_repeat_and_default_dir_and_warn_once(tmp_path):
    cb = MemorySnapshot(start_step=0, num_steps=1, every_n_steps=3, html=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            trainer = cpu_trainer(max_epochs=2, callbacks=[cb], default_root_dir=str(tmp_path))
            trainer.fit(ClassifierModule(arch="mlp"), ImageDataModule())
    assert len([w for w in caught if "need a GPU" in str(w.message)]) == 1
    assert [p.name for p in cb.files if p.suffix == ".txt"] == [
        f"memory_profile_rank0_step{s}.txt" for s in (0, 3, 6)
    ]
    assert all(p.parent == tmp_path / "memory_snapshot" for p in cb.files)


def test_default_dir_is_the_components_folder_in_the_loggers_log_dir(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    cb = MemorySnapshot(start_step=1, num_steps=1, html=False)
    _fit(cb, max_epochs=1, logger=logger)
    assert cb.files and all(p.parent == tmp_path / "run" / "version_0" / "memory_snapshot" for p in cb.files)


class Crash(ClassifierModule):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_exception_inside_a_window_still_writes_and_is_not_swallowed(tmp_path):
    cb = MemorySnapshot(start_step=2, num_steps=4, dirpath=str(tmp_path), html=False)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(cb, Crash(arch="mlp"))
    assert "memory_profile_rank0_step3_exception.txt" in _names(cb)


def test_fit_ending_inside_a_window_writes_what_it_recorded(tmp_path):
    cb = MemorySnapshot(start_step=2, num_steps=10, dirpath=str(tmp_path), html=False)
    _fit(cb, max_steps=5)
    assert "memory_profile_rank0_step4.txt" in _names(cb)


def test_a_write_failure_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cb = MemorySnapshot(start_step=1, num_steps=1, dirpath=str(blocker / "sub"))
    with pytest.warns(UserWarning, match="could not write"):
        trainer = cpu_trainer(max_epochs=2, callbacks=[cb])
        trainer.fit(ClassifierModule(arch="mlp"), ImageDataModule())
    assert trainer.global_step == 8 and cb.files == []


class FakeCuda:
    """Stands in for torch.cuda.memory's recording functions and the OOM observer."""

    def __init__(self, monkeypatch):
        self.calls, self.observers = [], []
        monkeypatch.setattr(layer, "_on_cuda", lambda pl_module: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", self.record)
        monkeypatch.setattr(
            torch.cuda.memory, "_snapshot", lambda *a, **k: {"segments": [], "n": len(self.calls)}
        )
        monkeypatch.setattr(
            torch._C, "_cuda_attach_out_of_memory_observer", self.observers.append, raising=False
        )

    def record(self, enabled="all", **kwargs):
        self.calls.append((enabled, kwargs))


def test_cuda_path_windows_arguments_and_file_names(monkeypatch, tmp_path):
    fake = FakeCuda(monkeypatch)
    cb = MemorySnapshot(
        start_step=1, num_steps=2, every_n_steps=4, max_entries=123, stacks="all", context="alloc",
        dirpath=str(tmp_path),
    )  # fmt: skip
    _fit(cb)
    on = ("all", {"context": "alloc", "stacks": "all", "max_entries": 123})
    assert fake.calls == [on, (None, {}), on, (None, {})]
    assert _names(cb) == [
        "memory_snapshot_rank0_step2.html", "memory_snapshot_rank0_step2.pickle",
        "memory_snapshot_rank0_step6.html", "memory_snapshot_rank0_step6.pickle",
    ]  # fmt: skip
    with open(tmp_path / "memory_snapshot_rank0_step6.pickle", "rb") as f:
        assert pickle.load(f) == {"segments": [], "n": 3}
    assert len(fake.observers) == 1


def test_cuda_path_oom_observer_and_exception(monkeypatch, tmp_path):
    fake = FakeCuda(monkeypatch)

    class OOM(ClassifierModule):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 3:
                fake.observers[0](0, 1 << 30, 1 << 30, 0)  # what the allocator calls at an OOM
                raise torch.OutOfMemoryError("CUDA out of memory")
            return super().training_step(batch, batch_idx)

    cb = MemorySnapshot(start_step=2, num_steps=5, dirpath=str(tmp_path), html=False)
    with pytest.raises(torch.OutOfMemoryError):
        _fit(cb, OOM(arch="mlp"))
    assert _names(cb) == ["memory_snapshot_rank0_step3_oom.pickle"]  # not written twice
    assert fake.calls[-1] == (None, {})  # recording stopped

    cb = MemorySnapshot(start_step=5, dirpath=str(tmp_path), html=False)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(cb, Crash(arch="mlp"))  # outside a window: the allocator state is still written
    assert _names(cb) == ["memory_snapshot_rank0_step3_exception.pickle"]


def test_cuda_path_rank_zero_only(monkeypatch, tmp_path):
    fake = FakeCuda(monkeypatch)
    monkeypatch.setattr(cpu_trainer().__class__, "global_rank", property(lambda self: 1))
    cb = MemorySnapshot(start_step=0, num_steps=1, ranks="zero", dirpath=str(tmp_path))
    _fit(cb)
    assert cb.files == [] and fake.calls == [] and fake.observers == []
    cb = MemorySnapshot(start_step=0, num_steps=1, ranks="all", dirpath=str(tmp_path), html=False)
    _fit(cb)
    assert _names(cb) == ["memory_snapshot_rank1_step0.pickle"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"every_n_steps": 1, "num_steps": 2}, "every_n_steps"),
        ({"ranks": "one"}, "ranks"),
        ({"context": "everything"}, "context"),
        ({"dirpath": ""}, "dirpath"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MemorySnapshot(**kwargs)


@pytest.mark.gpu
def test_real_cuda_snapshot(tmp_path):
    cb = MemorySnapshot(start_step=1, num_steps=2, dirpath=str(tmp_path))
    trainer = cpu_trainer(max_epochs=1, accelerator="gpu", devices=1, callbacks=[cb])
    trainer.fit(ClassifierModule(arch="cnn"), ImageDataModule())
    assert _names(cb) == ["memory_snapshot_rank0_step2.html", "memory_snapshot_rank0_step2.pickle"]
    with open(tmp_path / "memory_snapshot_rank0_step2.pickle", "rb") as f:
        snapshot = pickle.load(f)
    actions = {e["action"] for trace in snapshot["device_traces"] for e in trace}
    assert "alloc" in actions and snapshot["segments"]


def test_cpu_window_over_an_activation_visualizer_image_write_still_writes(tmp_path):
    """Issue 17.8: TensorBoard image writes inside the window leave stack frames torch cannot
    decode; the profile is written without them instead of not at all."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_tricks import ActivationVisualizer

    cb = MemorySnapshot(start_step=2, num_steps=3, dirpath=str(tmp_path / "mem"), html=False)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cpu_trainer(max_epochs=2, callbacks=[cb, ActivationVisualizer()], logger=logger)
        trainer.fit(ClassifierModule(arch="cnn"), ImageDataModule())
    table = tmp_path / "mem" / "memory_profile_rank0_step4.txt"
    assert table.exists(), sorted(p.name for p in (tmp_path / "mem").iterdir())
    assert "CPU Mem" in table.read_text()
