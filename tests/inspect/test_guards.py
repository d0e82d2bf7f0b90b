"""RetainedGraphGuard and AliasingGuard: they catch the mistake and stay silent on correct code."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_tricks import AliasingError, AliasingGuard, RetainedGraphError, RetainedGraphGuard
from lightning_tricks.functional.inspect import find_retained_graphs, graph_saved_bytes
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, make_image_dataset
from tests.helpers.zoo import HFImageClassifier, make_zoo_images, zoo_loaders


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
    guard = RetainedGraphGuard(every_n_steps=1, mode="raise")
    with pytest.raises(RetainedGraphError, match=r"`self\.history` holds 1 tensor.*graph nodes.*bytes"):
        cpu_trainer(callbacks=[guard]).fit(KeepsLosses(detach=False), ImageDataModule())


def test_retained_graph_warns_once_per_attribute():
    guard = RetainedGraphGuard(every_n_steps=2, mode="warn")
    with pytest.warns(UserWarning, match="self.history") as record:
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(KeepsLosses(detach=False), ImageDataModule())
    assert sum("RetainedGraphGuard" in str(w.message) for w in record) == 1


def test_retained_graph_silent_on_detached():
    guard = RetainedGraphGuard(every_n_steps=1, mode="raise")
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


# ------------------------------------------------------------------ aliasing
class SliceDataset(Dataset):
    """Returns whole batches as slices (views) of stored tensors, for ``batch_size=None`` loaders."""

    def __init__(self, batch_size: int = 16):
        base = make_image_dataset(64)
        self.x, self.y = base.tensors
        self.batch_size = batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


class SliceData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.train_set = SliceDataset()

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=None)


class Normalises(ClassifierModule):
    def __init__(self, in_place: bool):
        super().__init__("cnn")
        self.in_place = in_place

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.in_place:
            x -= x.mean()  # the mistake: changes the dataset's tensor
        else:
            x = x - x.mean()
        return super().training_step((x, y), batch_idx)


def test_aliasing_raise_names_tensor_and_dataset():
    dm = SliceData()
    original = dm.train_set.x.clone()
    guard = AliasingGuard(every_n_steps=1, mode="raise")
    with pytest.raises(AliasingError, match=r"`batch\[0\]` shares memory with `dataset\.x`"):
        cpu_trainer(callbacks=[guard]).fit(Normalises(in_place=True), dm)
    assert not torch.equal(original, dm.train_set.x)  # the corruption the guard reports is real


def test_aliasing_warns():
    guard = AliasingGuard(every_n_steps=1, mode="warn")
    with pytest.warns(UserWarning, match=r"batch\[0\]"):
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=True), SliceData())


def test_aliasing_silent_on_correct_code_and_on_copies():
    dm = SliceData()
    original = dm.train_set.x.clone()
    guard = AliasingGuard(every_n_steps=1, mode="raise")
    _silently(lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=False), dm))
    assert torch.equal(original, dm.train_set.x)
    # the default collate copies, so in-place changes to the batch are harmless and not reported
    _silently(
        lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=True), ImageDataModule())
    )


def test_guard_arguments():
    with pytest.raises(ValueError, match="mode"):
        AliasingGuard(mode="ignore")
    with pytest.raises(ValueError, match="every_n_steps"):
        RetainedGraphGuard(every_n_steps=0)


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
    guard = RetainedGraphGuard(mode="raise")  # every_n_steps=50
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


def test_aliasing_names_the_step_that_changed_the_tensor():
    class ZooNormalises(HFImageClassifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            x -= x.mean()
            return super().training_step((x, y), batch_idx)

    class Slices(Dataset):
        def __init__(self):
            self.x, self.y = make_zoo_images(16)

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.x[8 * i : 8 * i + 8], self.y[8 * i : 8 * i + 8]

    guard = AliasingGuard(every_n_steps=1, mode="raise")
    with pytest.raises(AliasingError, match=r"during training step 0;"):
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(
            ZooNormalises("resnet"), DataLoader(Slices(), batch_size=None)
        )
