"""SplitDataModule and its functional core (split_indices, split_dataset,
SeededShuffleSampler): exact sizes, stratified, reproducible; through a real Trainer:
splits, loaders, resume guard, DDP ranks."""

from __future__ import annotations

import json
from collections import Counter

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import Callback
from torch.utils.data import DistributedSampler, IterableDataset, TensorDataset

from lightning_tricks import SplitDataModule
from lightning_tricks.functional import (
    SeededShuffleSampler,
    resolve_split_sizes,
    split_dataset,
    split_indices,
)
from tests.helpers import ClassifierModule, cpu_trainer
from tests.helpers.ddp import GlooDDP
from tests.repro_helpers import ImageDataset

# ---------------------------------------------------------------- functional core


@pytest.mark.parametrize(
    ("n", "sizes", "expected"),
    [
        (10, [0.8, 0.1, 0.1], [8, 1, 1]),
        (10, [None, 0.1, 0.1], [8, 1, 1]),
        (10, [None, 3, 0], [7, 3, 0]),
        (7, [1 / 3, 1 / 3, 1 / 3], [3, 2, 2]),
        (10, [0.5, 0.2], [5, 2]),  # fractions may leave samples out
        (5, [5, None], [5, 0]),
    ],
)
def test_resolve_split_sizes(n, sizes, expected):
    assert resolve_split_sizes(n, sizes) == expected


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ([0.8, 0.3], "ask for 11 samples"),
        ([None, None], "only one split size may be None"),
        ([-1, None], r"sizes\[0\]"),
        ([1.5, None], r"sizes\[0\].*fraction"),
        ([float("nan"), None], r"sizes\[0\]"),
        (["half", None], r"sizes\[0\]"),
        ([True, None], r"sizes\[0\]"),
    ],
)
def test_bad_sizes_are_named(sizes, match):
    with pytest.raises((TypeError, ValueError), match=match):
        resolve_split_sizes(10, sizes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), a=st.floats(0, 1), b=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_splits_are_disjoint_exact_and_cover_with_a_rest(n, a, b, seed):
    b = b * (1 - a)
    parts = split_indices(n, [a, b, None], seed=seed)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    assert [len(p) for p in parts] == resolve_split_sizes(n, [a, b, None])
    assert all(p == sorted(p) for p in parts)


def test_seeded_and_independent_of_global_rng():
    state = torch.get_rng_state()
    a = split_indices(50, [0.6, None], seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not touched
    torch.manual_seed(1234)
    assert split_indices(50, [0.6, None], seed=1) == a
    assert split_indices(50, [0.6, None], seed=2) != a


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=2, max_size=5),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
def test_stratified_splits_keep_class_proportions(counts, frac, seed):
    labels = [c for c, k in enumerate(counts) for _ in range(k)]
    n = len(labels)
    for sizes, tolerance in (([frac, None], 1.0), ([frac, (1 - frac) / 2, None], 2.0)):
        parts = split_indices(n, sizes, seed=seed, labels=labels)
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert [len(p) for p in parts] == resolve_split_sizes(n, sizes)
        for part in parts:
            got = Counter(labels[i] for i in part)
            for c, k in enumerate(counts):
                assert abs(got[c] - k * len(part) / n) < tolerance + 1e-9, (sizes, c, got, counts)


def test_stratification_is_better_than_chance_on_a_rare_class():
    labels = [1] * 5 + [0] * 95
    for seed in range(20):
        _, val = split_indices(100, [None, 0.2], seed=seed, labels=labels)
        assert sum(labels[i] for i in val) == 1  # exactly its share, on every seed


def test_labels_of_wrong_length_or_unhashable():
    with pytest.raises(ValueError, match="labels"):
        split_indices(5, [None], labels=[0, 1])
    with pytest.raises(TypeError, match="labels"):
        split_indices(2, [None], labels=[[0], [1]])


def test_split_dataset_label_sources():
    x, y = torch.arange(40.0), torch.arange(40) % 4
    ds = TensorDataset(x, y)
    by_index = split_dataset(ds, [0.5, None], labels=1, seed=0)
    by_tensor = split_dataset(ds, [0.5, None], labels=y, seed=0)
    by_callable = split_dataset(ds, [0.5, None], labels=lambda sample: int(sample[1]), seed=0)
    ds.targets = y.tolist()
    by_attr = split_dataset(ds, [0.5, None], labels="targets", seed=0)
    expected = [s.indices for s in by_index]
    for other in (by_tensor, by_callable, by_attr):
        assert [s.indices for s in other] == expected
    assert Counter(int(y[i]) for i in expected[0]) == {0: 5, 1: 5, 2: 5, 3: 5}
    with pytest.raises(ValueError, match="labels"):
        split_dataset(ds, [None], labels="classes")
    with pytest.raises(ValueError, match="labels"):
        split_dataset(list(zip(x, y)), [None], labels=5)
    with pytest.raises(TypeError, match="dataset"):
        split_dataset(iter(range(3)), [None])


def test_seeded_shuffle_sampler_per_epoch_orders():
    s = SeededShuffleSampler(20, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[1]) == list(range(20)) and len(s) == 20
    assert list(SeededShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)


# ---------------------------------------------------------------- the datamodule


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
        strategy=GlooDDP(start_method="spawn"),
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


class _RecordOrder(Callback):
    def __init__(self):
        self.labels: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.labels.setdefault(trainer.current_epoch, []).extend(batch[1].tolist())


@pytest.mark.slow
def test_resume_with_loader_workers_sees_the_batches_of_the_straight_run(tmp_path):
    """With worker processes (which prefetch as soon as the iterator exists, before
    Lightning sets the sampler's epoch), the first resumed epoch gets its own order,
    not epoch 0's, and the resumed run ends with the straight run's weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.conformance.checks import CrashAt, Interrupt
    from tests.helpers.utils import state_diff, whole_state

    def run(root, ckpt_path=None, crash=None):
        L.seed_everything(0, verbose=False)
        model = ClassifierModule(arch="cnn")
        dm = SplitDataModule(ImageDataset(48), val=16, labels="targets", batch_size=8, num_workers=2)
        order, ckpt = _RecordOrder(), ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
        cbs = [order, ckpt, *([CrashAt(crash)] if crash is not None else [])]
        trainer = cpu_trainer(
            max_epochs=3, callbacks=cbs, enable_checkpointing=True, default_root_dir=str(root)
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return order.labels, whole_state(trainer, model, ignore_callbacks=[order, ckpt])

    straight_order, straight = run(tmp_path / "straight")
    with pytest.raises(Interrupt):
        run(tmp_path / "crashed", crash=2)
    resumed_order, resumed = run(
        tmp_path / "resumed", ckpt_path=str(tmp_path / "crashed" / "ckpt" / "last.ckpt")
    )
    assert resumed_order[2] == straight_order[2] != straight_order[0]
    diff = state_diff(straight, resumed)
    assert not diff, diff[:5]
