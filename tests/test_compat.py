"""Every private Lightning/torch API we use still exists and behaves as `_compat` expects.

An upgrade that moves an internal fails here, by name, instead of in a component at run time.
"""

from __future__ import annotations

import importlib

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from lightning_tricks import _compat
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


@pytest.mark.parametrize("helper", sorted(_compat.INTERNALS))
def test_each_internal_is_where_compat_looks(helper):
    if helper in _compat.CUDA_INTERNALS and not torch.backends.cuda.is_built():
        pytest.skip("a CUDA-build internal; this torch is a CPU build")
    module_path, chain = _compat.INTERNALS[helper]
    obj = importlib.import_module(module_path)
    for part in chain.split("."):
        assert hasattr(obj, part), f"_compat.{helper}: {module_path}.{chain} is gone (missing {part!r})"
        obj = getattr(obj, part)


def test_every_private_use_goes_through_compat():
    """No module of the package but `_compat` reaches into Lightning/torch internals."""
    import pathlib
    import re

    root = pathlib.Path(_compat.__file__).parent
    pattern = re.compile(
        r"torch\._(?!_)[a-z]|_memory_viz\._|\._logger_connector|\._data_source|\._setup_model|"
        r"\._register_ddp_hooks|import _configure_optimizers|\.batch_progress"
    )
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "_compat.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) and "`torch._" not in code:
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "private APIs used outside _compat:\n" + "\n".join(offenders)


def test_torch_helpers_compute_what_they_say():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([1.0])
    assert [float(n) for n in _compat.foreach_norm([a, b])] == [5.0, 1.0]
    _compat.foreach_mul_([a, b], 2.0)
    assert a.tolist() == [6.0, 8.0] and b.tolist() == [2.0]
    assert {"inductor", "eager", "aot_eager"} <= set(_compat.dynamo_backends())
    handler = _compat.compile_event_handler()
    assert handler is not None
    for name in ("register_start_callback", "register_end_callback", "remove_start_callback"):
        assert callable(getattr(handler, name))


def test_lightning_helpers_on_a_real_fit():
    seen: dict = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("completed", []).append(_compat.training_batches_completed(trainer))
            seen.setdefault("logs", []).append(_compat.should_update_logs(trainer))
            source = _compat.fit_data_source(trainer)
            seen["source"] = source.is_defined() and source.dataloader() is not None

    model = ClassifierModule(arch="mlp")
    trainer = cpu_trainer(max_epochs=1, callbacks=[Probe()], log_every_n_steps=2, logger=True)
    trainer.fit(model, datamodule=ImageDataModule())
    assert seen["completed"] == [0, 1, 2, 3]
    assert seen["logs"] == [False, True, False, True]
    assert seen["source"] is True
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    optimizers, schedulers, _ = _compat.configure_optimizers_outputs(
        {"optimizer": opt, "lr_scheduler": sched}
    )
    assert optimizers == [opt] and schedulers == [sched]
    assert isinstance(trainer, L.Trainer)


def test_dispatch_mode_helpers_behave_as_selective_checkpointing_expects():
    from torch.utils._python_dispatch import TorchDispatchMode

    kept = []
    guard = _compat.version_sharing_detach_guard()
    assert guard is not None

    class Keep(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            assert type(func) is _compat.op_overload_type()
            out = func._op(*args, **(kwargs or {}))  # what OpOverload.__call__ forwards to
            if func is torch.ops.aten.mm.default:
                with guard():
                    kept.append(out.detach())
            return out

    a = torch.eye(2)
    with Keep():
        y = a @ a
    assert torch.equal(y, torch.eye(2))
    version = kept[0]._version
    y.mul_(2)  # the kept tensor sees the in-place change through the shared version counter
    assert kept[0]._version == version + 1
