"""RetainedGraphGuard and its functional core: it catches the mistake and stays silent on correct code."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_tricks import RetainedGraphError, RetainedGraphGuard
from lightning_tricks.functional.inspect import find_retained_graphs
from lightning_tricks.functional.inspect.retained_graph_guard import graph_saved_bytes
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer
from tests.helpers.zoo import HFImageClassifier, zoo_loaders


def _silently(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*(LeafSpec|workers|litlogger|log_every_n_steps|val_dataloader).*")
        return fn()


# ------------------------------------------------------------------ retained graphs
class KeepsLosses(ClassifierModule):
    """Keeps every training loss: with ``detach=False``, the `losses.append(loss)` mistake."""

    def __init__(self, detach: bool):
        super().__init__("cnn")
        self.detach = detach
        self.history = {"losses": []}
        self.running = torch.zeros(())

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        kept = loss.detach() if self.detach else loss
        self.history["losses"].append(kept)
        return loss


def test_retained_graph_raise_names_attribute_and_memory():
    guard = RetainedGraphGuard(every_n_steps=1, on_error="raise")
    with pytest.raises(RetainedGraphError, match=r"`self\.history` holds 1 tensor.*graph nodes.*bytes"):
        cpu_trainer(callbacks=[guard]).fit(KeepsLosses(detach=False), ImageDataModule())


def test_retained_graph_warns_once_per_attribute():
    guard = RetainedGraphGuard(every_n_steps=2, on_error="warn")
    with pytest.warns(UserWarning, match="self.history") as record:
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(KeepsLosses(detach=False), ImageDataModule())
    assert sum("RetainedGraphGuard" in str(w.message) for w in record) == 1


def test_retained_graph_silent_on_detached():
    guard = RetainedGraphGuard(every_n_steps=1, on_error="raise")
    _silently(
        lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(KeepsLosses(detach=True), ImageDataModule())
    )


def test_graph_memory_estimate_counts_live_saved_tensors():
    w = torch.randn(1000, requires_grad=True)
    model = torch.nn.Linear(1, 1)
    model.cache = [(w * 3).exp()]  # exp saves its 4000-byte result; mul saves nothing large
    (found,) = find_retained_graphs(model)
    assert found.path == "self.cache" and found.num_tensors == 1 and found.saved_bytes >= 4000
    loss = (w * 3).exp().sum()
    before = graph_saved_bytes([loss])[1]
    loss.backward()  # frees the saved result
    assert graph_saved_bytes([loss])[1] < before
    model.cache = [t.detach() for t in model.cache]
    assert find_retained_graphs(model) == []


def test_guard_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        RetainedGraphGuard(every_n_steps=0)
    with pytest.raises(ValueError, match=r"on_error.*'crash'"):
        RetainedGraphGuard(on_error="crash")


def test_retained_graph_ignore_records_without_warning():
    guard = RetainedGraphGuard(every_n_steps=1, on_error="ignore")
    _silently(
        lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(KeepsLosses(detach=False), ImageDataModule())
    )
    assert [f.path for f in guard.found] == ["self.history"] and guard.found[0].saved_bytes > 0


# ------------------------------------------------------------------ zoo models (issue 11)
class ZooKeepsLosses(HFImageClassifier):
    """An HF ResNet classifier that keeps every loss with its graph."""

    def __init__(self):
        super().__init__("resnet")
        self.losses = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss)
        return loss


def test_retained_graph_defaults_catch_a_short_fit_on_a_zoo_model():
    """At defaults (every 50 steps) a 2-step fit is scanned at the first step after start and at epoch end."""
    train, _ = zoo_loaders("resnet", n=16, batch_size=8)
    guard = RetainedGraphGuard(on_error="raise")  # every_n_steps=50
    with pytest.raises(RetainedGraphError, match=r"self\.losses"):
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(ZooKeepsLosses(), train)


def test_retained_graph_scan_schedule():
    """Scans: the first step after start, every N after it, and each epoch end."""
    scanned = []
    guard = RetainedGraphGuard(every_n_steps=3)
    real = guard._scan
    guard._scan = lambda trainer, pl_module: scanned.append(trainer.global_step) or real(trainer, pl_module)
    cpu_trainer(max_epochs=2, callbacks=[guard]).fit(KeepsLosses(detach=True), ImageDataModule())  # 8 steps
    assert scanned == [1, 4, 4, 7, 8]  # steps 1, 4, 7 at batch start; epoch ends after steps 4 and 8
