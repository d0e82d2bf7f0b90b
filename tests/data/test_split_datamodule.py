"""SplitDataModule through a real Trainer: splits, loaders, resume guard, DDP ranks."""

from __future__ import annotations

import json
from collections import Counter

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import DistributedSampler, IterableDataset, TensorDataset

from lightning_tricks import SplitDataModule
from lightning_tricks.functional import SeededShuffleSampler
from tests.helpers import ClassifierModule, cpu_trainer
from tests.repro_helpers import ImageDataset


class RecordingModule(ClassifierModule):
    def __init__(self):
        super().__init__(arch="mlp")
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[1].tolist())
        return super().training_step(batch, batch_idx)


def test_stratified_split_sizes_and_disjointness():
    ds = ImageDataset(100)
    dm = SplitDataModule(ds, val=0.2, test=10, labels="targets", num_workers=0)
    dm.setup("fit")
    train, val, test = dm.split_indices
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert Counter(int(ds.targets[i]) for i in val) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert dm.val_set.indices == val and len(dm.train_dataloader().dataset) == 70


def test_split_depends_only_on_seed():
    ds = ImageDataset(64)
    a = SplitDataModule(ds, val=16, seed=3, num_workers=0).split_indices
    torch.manual_seed(99)
    assert SplitDataModule(ds, val=16, seed=3, num_workers=0).split_indices == a
    assert SplitDataModule(ds, val=16, seed=4, num_workers=0).split_indices != a


def test_loader_defaults_and_overrides(monkeypatch):
    import lightning_tricks.data.split_datamodule as mod

    monkeypatch.setattr(mod, "_cpu_count", lambda: 12)
    ds = ImageDataset(32)
    auto = SplitDataModule(ds).loader_kwargs()
    assert auto == {"num_workers": 8, "pin_memory": torch.cuda.is_available(), "persistent_workers": True}
    assert SplitDataModule(ds, max_workers=3).loader_kwargs()["num_workers"] == 3
    manual = SplitDataModule(ds, num_workers=2, pin_memory=True, persistent_workers=False).loader_kwargs()
    assert manual == {"num_workers": 2, "pin_memory": True, "persistent_workers": False}
    monkeypatch.setattr(mod, "_cpu_count", lambda: 1)
    dm = SplitDataModule(ds, max_workers=0)
    assert dm.loader_kwargs() == {
        "num_workers": 0,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": False,
    }
    loader = SplitDataModule(ds, num_workers=0, batch_size=5, eval_batch_size=7).val_dataloader()
    assert loader.batch_size == 7 and loader.num_workers == 0


def test_workers_are_divided_among_processes_per_node(monkeypatch):
    import lightning_tricks.data.split_datamodule as mod

    monkeypatch.setattr(mod, "_cpu_count", lambda: 12)
    dm = SplitDataModule(ImageDataset(32))
    dm.trainer = type(
        "T", (), {"num_devices": 4, "strategy": type("S", (), {"root_device": torch.device("cpu")})}
    )()
    assert dm.loader_kwargs() == {"num_workers": 3, "pin_memory": False, "persistent_workers": True}


def test_fit_shuffles_per_epoch_reproducibly_and_validates_on_val_split():
    def run():
        L.seed_everything(0, verbose=False)
        model = RecordingModule()
        dm = SplitDataModule(ImageDataset(48), val=16, batch_size=8, num_workers=0)
        trainer = cpu_trainer(max_epochs=2, limit_val_batches=None)
        trainer.fit(model, datamodule=dm)
        assert trainer.num_val_batches == [2]
        assert isinstance(trainer.train_dataloader.sampler, SeededShuffleSampler)
        return model.seen

    a, b = run(), run()
    assert a == b
    assert a[:4] != a[4:]  # epoch 1 is shuffled differently from epoch 0
    assert sorted(y for batch in a[:4] for y in batch) == sorted(y for batch in a[4:] for y in batch)


def test_empty_val_split_gives_no_val_loader():
    dm = SplitDataModule(ImageDataset(16), val=0, num_workers=0)
    dm.setup("fit")
    assert dm.val_dataloader() == [] and len(dm.predict_dataloader()) == 0


def test_resuming_on_a_different_split_is_refused(tmp_path):
    ds = ImageDataset(48)
    model = ClassifierModule(arch="mlp")
    trainer = cpu_trainer(max_epochs=1, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=SplitDataModule(ds, val=16, num_workers=0, seed=0))
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    again = cpu_trainer(max_epochs=2, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="different split"):
        again.fit(
            ClassifierModule(arch="mlp"),
            datamodule=SplitDataModule(ds, val=16, num_workers=0, seed=1),
            ckpt_path=ckpt,
        )
    same = cpu_trainer(max_epochs=2, default_root_dir=str(tmp_path))
    same.fit(
        ClassifierModule(arch="mlp"),
        datamodule=SplitDataModule(ds, val=16, num_workers=0, seed=0),
        ckpt_path=ckpt,
    )
    assert same.current_epoch == 2


class _Stream(IterableDataset):
    def __iter__(self):
        return iter(range(3))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dataset": None}, "dataset"),
        ({"dataset": _Stream()}, "dataset"),
        ({"dataset": "abc"}, "dataset"),
        ({"dataset": TensorDataset(torch.zeros(0))}, "dataset"),
        ({"val": 1.5}, "val"),
        ({"val": 40, "test": 40}, "ask for 80"),
        ({"train": 0}, "train"),
        ({"train": None, "val": None}, "val"),
        ({"labels": [0, 1]}, "labels"),
        ({"labels": 2.5}, "labels"),
        ({"labels": "classes"}, "labels"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": 0, "persistent_workers": True}, "persistent_workers"),
        ({"pin_memory": "yes"}, "pin_memory"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    base = {"dataset": ImageDataset(32)}
    with pytest.raises((TypeError, ValueError), match=name):
        SplitDataModule(**{**base, **kwargs})


class _RecordSplit(Callback):
    def __init__(self, out):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        dm = trainer.datamodule
        sampler = trainer.train_dataloader.sampler
        seen = [dm.train_set.indices[i] for i in sampler]
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(
                {"split": dm.split_indices, "seen": seen, "dist": isinstance(sampler, DistributedSampler)}, f
            )


@pytest.mark.ddp
def test_ddp_ranks_share_the_split_and_partition_the_training_set(tmp_path):
    dm = SplitDataModule(ImageDataset(40), val=8, test=0.1, labels="targets", batch_size=4, num_workers=0)
    trainer = cpu_trainer(
        strategy="ddp_spawn",
        devices=2,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[_RecordSplit(str(tmp_path))],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(ClassifierModule(arch="mlp"), datamodule=dm)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["split"] == r1["split"] == dm.split_indices
    assert r0["dist"] and r1["dist"]
    assert not set(r0["seen"]) & set(r1["seen"])
    assert sorted(r0["seen"] + r1["seen"]) == sorted(dm.split_indices[0])


@pytest.mark.parametrize("form", ["numpy", "int_index", "numpy_int_index", "callable"])
def test_labels_accept_the_forms_split_dataset_accepts(form):
    np = pytest.importorskip("numpy")
    from lightning_tricks.functional import split_dataset

    ds = ImageDataset(40)
    targets = ds.targets.numpy()
    labels = {
        "numpy": targets,
        "int_index": 1,  # the label's index in each (x, y) sample: 0-d tensors, keyed by value
        "numpy_int_index": np.int64(1),
        "callable": lambda sample: int(sample[1]),
    }[form]
    dm = SplitDataModule(ds, val=0.25, labels=labels, seed=3, num_workers=0)
    dm.setup("fit")
    expected = [s.indices for s in split_dataset(ds, [None, 0.25, 0], labels=labels, seed=3)]
    assert dm.split_indices == expected
    val_counts = Counter(int(targets[i]) for i in dm.split_indices[1])
    for c, total in Counter(targets.tolist()).items():  # stratified: each class within 1 of its share
        assert abs(val_counts[c] - total / 4) <= 1


def test_bad_numpy_labels_are_named():
    np = pytest.importorskip("numpy")
    with pytest.raises(ValueError, match="`labels` must have one entry per sample \\(32\\); got 3"):
        SplitDataModule(ImageDataset(32), labels=np.zeros(3))


def test_fit_a_zoo_bert_on_a_stratified_split_of_dict_samples():
    from tests.helpers.zoo import HFTextClassifier, TokenDataset

    class Recording(HFTextClassifier):
        def __init__(self):
            super().__init__(lr=0.01)
            self.val_labels: list[int] = []

        def validation_step(self, batch, batch_idx):
            self.val_labels += batch["labels"].tolist()
            return super().validation_step(batch, batch_idx)

    ds = TokenDataset(24)  # dict samples {input_ids, attention_mask, labels}
    dm = SplitDataModule(ds, val=0.25, labels=ds.labels.numpy(), batch_size=6, num_workers=0)
    model = Recording()
    trainer = cpu_trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3  # 18 training samples in batches of 6
    counts = Counter(model.val_labels)  # 6 per class; val 6 samples: 1 or 2 of each class
    assert set(counts) == {0, 1, 2, 3} and all(v in (1, 2) for v in counts.values())
    assert sorted(model.val_labels) == sorted(int(ds.labels[i]) for i in dm.split_indices[1])
