"""AliasingGuard and its functional core: it catches the mistake and stays silent on correct code."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_tricks import AliasingError, AliasingGuard
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, make_image_dataset
from tests.helpers.zoo import HFImageClassifier, make_zoo_images


def _silently(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*(LeafSpec|workers|litlogger|log_every_n_steps|val_dataloader).*")
        return fn()


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
    guard = AliasingGuard(every_n_steps=1, on_error="raise")
    with pytest.raises(AliasingError, match=r"`batch\[0\]` shares memory with `dataset\.x`"):
        cpu_trainer(callbacks=[guard]).fit(Normalises(in_place=True), dm)
    assert not torch.equal(original, dm.train_set.x)  # the corruption the guard reports is real


def test_aliasing_warns():
    guard = AliasingGuard(every_n_steps=1, on_error="warn")
    with pytest.warns(UserWarning, match=r"batch\[0\]"):
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=True), SliceData())


def test_aliasing_silent_on_correct_code_and_on_copies():
    dm = SliceData()
    original = dm.train_set.x.clone()
    guard = AliasingGuard(every_n_steps=1, on_error="raise")
    _silently(lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=False), dm))
    assert torch.equal(original, dm.train_set.x)
    # the default collate copies, so in-place changes to the batch are harmless and not reported
    _silently(
        lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=True), ImageDataModule())
    )


def test_guard_arguments():
    with pytest.raises(ValueError, match=r"on_error.*'warn', 'raise', 'ignore'.*'crash'"):
        AliasingGuard(on_error="crash")


def test_aliasing_ignore_records_without_warning():
    guard = AliasingGuard(every_n_steps=1, on_error="ignore")
    _silently(
        lambda: cpu_trainer(max_epochs=1, callbacks=[guard]).fit(Normalises(in_place=True), SliceData())
    )
    assert len(guard.found) == 1 and "`batch[0]` shares memory with `dataset.x`" in guard.found[0]


# ------------------------------------------------------------------ zoo models (issue 11)
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

    guard = AliasingGuard(every_n_steps=1, on_error="raise")
    with pytest.raises(AliasingError, match=r"during training step 0;"):
        cpu_trainer(max_epochs=1, callbacks=[guard]).fit(
            ZooNormalises("resnet"), DataLoader(Slices(), batch_size=None)
        )
