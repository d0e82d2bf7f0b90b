"""Compile: in-place compilation that keeps state_dict keys, compile-time report, recompile warning."""

from __future__ import annotations

import copy
import csv
import pickle
import warnings

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch._dynamo.utils import counters

from lightning_tricks import Compile
from lightning_tricks.functional import compile_modules, uncompile_modules
from tests.helpers import ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer, params_equal, state_of


def test_compile_modules_traces_torch_nn_containers_and_keeps_keys():
    torch._dynamo.reset()
    counters.clear()
    model = SmallCNN()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert compile_modules(model, ["backbone", "head"], backend="eager") == ["backbone", "head"]
    assert torch.allclose(model(x), expected)
    # both nn.Sequential forwards were really captured (nn.Module.compile() captures nothing here)
    assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 2
    assert list(model.state_dict()) == keys
    assert compile_modules(model, "backbone", backend="eager") == []  # already compiled
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.allclose(clone(x), expected)
    assert uncompile_modules(model) == ["backbone", "head"]
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="`backend`"):
        compile_modules(SmallCNN(), backend="nope")
    with pytest.raises(ValueError, match="`mode`"):
        Compile(mode="fast")
    with pytest.raises(TypeError, match="`dynamic`"):
        Compile(dynamic="yes")
    with pytest.raises(ValueError, match="`backend`"):
        cpu_trainer(callbacks=[Compile(backend="nope")]).fit(ClassifierModule(), datamodule=ImageDataModule())


def _fit(callback, tmp_path, n_train=64, **trainer_args):
    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="cnn")
    trainer = cpu_trainer(callbacks=[callback] if callback else [], **trainer_args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=ImageDataModule(n_train=n_train, batch_size=16))
    return model, [str(w.message) for w in caught]


def test_fit_reports_compile_time_and_matches_eager(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    callback = Compile(backend="aot_eager")
    compiled, _ = _fit(
        callback, tmp_path, logger=TensorBoardLogger(str(tmp_path), name="tb"), log_every_n_steps=1
    )
    eager, _ = _fit(None, tmp_path)
    assert callback.compile_time_s > 0
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    acc.Reload()
    assert "compile/time_s" in acc.Tags()["scalars"]
    assert acc.Scalars("compile/time_s")[0].value > 0
    # the same training, up to float reassociation
    a, b = state_of(compiled), state_of(eager)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert all("forward" not in m.__dict__ for m in compiled.modules())  # unwrapped at teardown


def test_compile_time_reaches_a_csv_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    callback = Compile(targets=["head"], backend="eager")
    logger = CSVLogger(tmp_path, name="run")
    _fit(callback, tmp_path, n_train=32, max_epochs=1, logger=logger, log_every_n_steps=1)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    values = [float(r["compile/time_s"]) for r in rows if r.get("compile/time_s")]
    assert values and values[0] > 0 and values[0] <= callback.compile_time_s
    assert "compile_time_s" not in rows[0]


def test_smaller_last_batch_warns_with_the_fix(tmp_path):
    callback = Compile(targets=["backbone"], backend="eager")
    _, messages = _fit(callback, tmp_path, n_train=40, max_epochs=1)  # batches 16, 16, 8
    warned = [m for m in messages if "recompiled" in m]
    assert len(warned) == 1 and "drop_last=True" in warned[0] and "dynamic=True" in warned[0]
    assert callback.recompiles


def test_no_warning_without_shape_change(tmp_path):
    callback = Compile(targets=["backbone"], backend="eager")
    _, messages = _fit(callback, tmp_path, n_train=48, max_epochs=2, limit_val_batches=2)
    assert not [m for m in messages if "recompiled" in m]
    assert not callback.recompiles


@pytest.mark.slow
def test_inductor_fit_matches_eager(tmp_path):
    short = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    callback = Compile(targets=["head"])
    compiled, _ = _fit(callback, tmp_path, **short)
    eager, _ = _fit(None, tmp_path, **short)
    assert callback.compile_time_s > 0
    diff = params_equal(state_of(compiled), state_of(eager))
    a, b = state_of(compiled), state_of(eager)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), diff


@pytest.mark.gpu
def test_inductor_fit_on_gpu(tmp_path):
    L.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="blocks")
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=1,
        precision="16-mixed",
        logger=False,
        enable_checkpointing=False,
        callbacks=[Compile(targets=["backbone.blocks.*"])],
    )
    trainer.fit(model, datamodule=ImageDataModule())
    assert trainer.state.finished and trainer.callbacks[0].compile_time_s > 0


class _Crash(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("deliberate crash")


def test_a_crashed_fit_leaves_the_model_plain_and_the_next_fit_compiles_again(tmp_path):
    """Issue 17.7: the wrappers and compile-event callbacks go on every exit path."""
    from lightning_tricks._compat import compile_event_handler
    from lightning_tricks.functional.perf._targets import find_wrapped
    from lightning_tricks.functional.perf.compile import CompiledForward

    torch._dynamo.reset()
    handler = compile_event_handler()
    before = (len(handler.start_callbacks), len(handler.end_callbacks))
    cb, model = Compile(targets=["head"], backend="eager"), ClassifierModule(arch="mlp")
    with pytest.raises(RuntimeError, match="deliberate crash"):
        cpu_trainer(max_epochs=1, callbacks=[cb, _Crash()]).fit(model, ImageDataModule())
    assert find_wrapped(model, CompiledForward) == []
    assert (len(handler.start_callbacks), len(handler.end_callbacks)) == before

    class Seen(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.wrapped = [(n, w.options["backend"]) for n, w in find_wrapped(pl_module, CompiledForward)]

    seen = Seen()
    cb.backend = "aot_eager"  # a changed option is honoured by the next fit
    cpu_trainer(max_epochs=1, callbacks=[cb, seen]).fit(model, ImageDataModule())
    assert seen.wrapped == [("head", "aot_eager")]
    assert find_wrapped(model, CompiledForward) == []


def test_compile_with_activation_visualizer_captures(tmp_path):
    """Issue 17.1: a capture's forward hooks fire although validation compiled the forward."""
    from lightning_tricks import ActivationVisualizer

    torch._dynamo.reset()
    # the sample has the validation batches' shape: no shape change forces a recompile
    visualizer = ActivationVisualizer(every_n_epochs=1, layers=["backbone.*"], max_layers=2, num_samples=8)
    compiled = Compile(backend="eager")
    L.seed_everything(0, verbose=False)
    trainer = cpu_trainer(
        max_epochs=2, callbacks=[compiled, visualizer], default_root_dir=str(tmp_path), limit_val_batches=2
    )
    trainer.fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule(n_train=32, batch_size=8))
    assert trainer.state.finished
    assert visualizer.last_stats and set(visualizer.last_stats) <= {
        n for n, _ in trainer.lightning_module.named_modules()
    }
    assert all(len(h) == 2 for h in visualizer.history.values())  # one capture per epoch, none stale
