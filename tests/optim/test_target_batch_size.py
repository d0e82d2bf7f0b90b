"""TargetBatchSize: the functional accumulation helpers, and the callback through a real Trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks import TargetBatchSize
from lightning_tricks.functional import WindowMean, accumulation_steps
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer
from tests.helpers.ddp import GlooDDP
from tests.optim.clip_helpers import csv_scalars

# --------------------------------------------------------------------------- functional helpers


@pytest.mark.parametrize("g,b,w,k", [(256, 32, 2, 4), (32, 32, 1, 1), (96, 16, 3, 2)])
def test_accumulation_steps(g, b, w, k):
    assert accumulation_steps(g, b, w) == k
    assert b * w * accumulation_steps(g, b, w) == g


@pytest.mark.parametrize("g,b,w", [(100, 32, 1), (16, 32, 1), (64, 16, 3)])
def test_accumulation_steps_impossible(g, b, w):
    with pytest.raises(ValueError, match=f"`global_batch_size` {g} is not a multiple of .* {b * w}"):
        accumulation_steps(g, b, w)


def test_window_mean():
    m = WindowMean()
    assert math.isnan(float(m.compute()))
    m.update(torch.tensor(1.0), weight=16)
    m.update(torch.tensor(4.0), weight=8)
    assert float(m.compute()) == pytest.approx((16 * 1 + 8 * 4) / 24)
    assert m.sums().tolist() == [48.0, 24.0]
    m.reset()
    m.update(torch.tensor(7.0))
    assert float(m.compute()) == 7.0 and m.num_updates == 1
    with pytest.raises(ValueError, match="weight"):
        m.update(torch.tensor(1.0), weight=-1)


# --------------------------------------------------------------------------- the callback


class RecordingModule(ClassifierModule):
    """Records every batch's undivided loss and size."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[tuple[float, int]] = []

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.seen.append((float(loss.detach()), len(batch[0])))
        return loss


def scalars(log_dir):
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("n_train", [40, 56])  # batches 16,16,8 and 16,16,16,8
def test_actual_loss_is_the_window_mean(tmp_path, n_train):
    model = RecordingModule()
    trainer = cpu_trainer(
        callbacks=[TargetBatchSize(global_batch_size=32)],
        max_epochs=2,
        logger=CSVLogger(str(tmp_path), name="csv"),
        log_every_n_steps=1,
    )
    trainer.fit(model, ImageDataModule(n_train=n_train, batch_size=16))
    assert trainer.accumulate_grad_batches == 2
    per_epoch = len(model.seen) // 2
    assert trainer.global_step == 2 * 2  # ceil(3 / 2) == ceil(4 / 2) == 2 steps per epoch
    expected = []
    for epoch in range(2):
        batches = model.seen[epoch * per_epoch : (epoch + 1) * per_epoch]
        for start in range(0, per_epoch, 2):
            window = batches[start : start + 2]
            expected.append(sum(loss * n for loss, n in window) / sum(n for _, n in window))
    logged = csv_scalars(trainer.logger.log_dir)
    actual = logged["target_batch_size/actual_loss"]
    assert [s for s, _ in actual] == [0, 1, 2, 3]
    assert [v for _, v in actual] == pytest.approx(expected, rel=1e-5)
    if n_train == 40:  # the last window holds one batch; Lightning's loss is half of it
        lightning_loss = model.seen[2][0] / 2
        assert actual[1][1] == pytest.approx(model.seen[2][0], rel=1e-5)
        assert actual[1][1] != pytest.approx(lightning_loss, rel=1e-3)
    # epoch-level, through LightningModule.log: once per epoch, at the epoch's last step
    assert logged["target_batch_size/effective_batch_size"] == [(1, 32.0), (3, 32.0)]
    assert not {"actual_loss", "effective_batch_size"} & set(logged)


def test_accumulation_is_set_before_optimizers_are_configured():
    model = ClassifierModule(scheduler="onecycle")  # reads trainer.estimated_stepping_batches
    trainer = cpu_trainer(callbacks=[TargetBatchSize(global_batch_size=64)], max_epochs=1)
    trainer.fit(model, ImageDataModule(n_train=64, batch_size=16))
    assert trainer.accumulate_grad_batches == 4 and trainer.global_step == 1
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 1


def test_agreeing_trainer_value_and_per_device_batch_size():
    trainer = cpu_trainer(
        callbacks=[TargetBatchSize(global_batch_size=48, per_device_batch_size=16)],
        accumulate_grad_batches=3,
        max_epochs=1,
    )
    trainer.fit(ClassifierModule(), ImageDataModule(n_train=48))
    assert trainer.global_step == 1


@pytest.mark.parametrize(
    "callbacks,trainer_kwargs,error,match",
    [
        ([TargetBatchSize(global_batch_size=40)], {}, ValueError, "`global_batch_size` 40 is not a multiple of"),
        ([TargetBatchSize(global_batch_size=32)], {"accumulate_grad_batches": 4}, MisconfigurationException,
         "accumulate_grad_batches=4"),
        ([TargetBatchSize(global_batch_size=32), GradientAccumulationScheduler({0: 2})], {},
         MisconfigurationException, "GradientAccumulationScheduler"),
    ],
)  # fmt: skip
def test_errors(callbacks, trainer_kwargs, error, match):
    trainer = cpu_trainer(callbacks=callbacks, max_epochs=1, **trainer_kwargs)
    with pytest.raises(error, match=match):
        trainer.fit(ClassifierModule(), ImageDataModule(batch_size=16))


def test_no_logging_without_flag(tmp_path):
    trainer = cpu_trainer(
        callbacks=[TargetBatchSize(global_batch_size=32, log_actual_loss=False)],
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
    )
    trainer.fit(ClassifierModule(), ImageDataModule())
    logged = scalars(trainer.logger.log_dir)
    assert "target_batch_size/actual_loss" not in logged
    assert "target_batch_size/effective_batch_size" in logged


class RankRecordingModule(RecordingModule):
    def __init__(self, out: str, **kw):
        super().__init__(**kw)
        self.out = out

    def on_train_end(self):
        torch.save(self.seen, f"{self.out}/seen{self.global_rank}.pt")


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_world_size_and_rank_mean(tmp_path):
    trainer = cpu_trainer(
        strategy=GlooDDP(start_method="spawn"),
        devices=2,
        callbacks=[TargetBatchSize(global_batch_size=64)],
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=0),
        log_every_n_steps=1,
    )
    trainer.fit(RankRecordingModule(str(tmp_path)), ImageDataModule(n_train=128, batch_size=16))
    seen = [torch.load(tmp_path / f"seen{r}.pt") for r in range(2)]
    assert [len(s) for s in seen] == [4, 4]  # 64 samples per rank, accumulation 2: 2 steps
    expected = []
    for start in (0, 2):
        window = seen[0][start : start + 2] + seen[1][start : start + 2]
        expected.append(sum(loss * n for loss, n in window) / sum(n for _, n in window))
    logged = scalars(tmp_path / "tb" / "version_0")
    assert [v for _, v in logged["target_batch_size/actual_loss"]] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- batch sizes of HF-style batches

from torch.utils.data import DataLoader, default_collate  # noqa: E402

from tests.helpers.zoo import HFTextClassifier, TokenDataset  # noqa: E402

KEYS = ("input_ids", "attention_mask", "labels")


class RecordingText(HFTextClassifier):
    """HF-style BERT: dict batches, ``forward(**batch)``; records each batch's loss and size."""

    def __init__(self, return_size: bool = False):
        super().__init__(lr=0.01)
        self.seen: list[tuple[float, int]] = []
        self.return_size = return_size

    def training_step(self, batch, batch_idx):
        inputs = batch.inputs if isinstance(batch, Opaque) else {k: batch[k] for k in KEYS}
        loss = self(**inputs).loss * (1 + batch_idx)  # batches of clearly different losses
        n = len(inputs["input_ids"])
        self.seen.append((float(loss.detach()), n))
        return {"loss": loss, "batch_size": n} if self.return_size else loss


def with_scalar_first(samples):
    """An HF-style dict batch whose first entry is a 0-d tensor (e.g. a token count)."""
    batch = default_collate(samples)
    return {"num_items_in_batch": batch["attention_mask"].sum(), **batch}


class Opaque:
    """A batch object with no tensors the automatic rule can see (like a graph batch)."""

    def __init__(self, inputs):
        self.inputs = inputs


def opaque(samples):
    return Opaque(default_collate(samples))


def window_means(seen, per_window=2):
    out = []
    for start in range(0, len(seen), per_window):
        window = seen[start : start + per_window]
        out.append(sum(loss * n for loss, n in window) / sum(n for _, n in window))
    return out


def fit_text(tmp_path, collate, **callback_kw):
    model = RecordingText(return_size=callback_kw.pop("return_size", False))
    loader = DataLoader(TokenDataset(56), batch_size=16, collate_fn=collate)  # 16, 16, 16, 8
    trainer = cpu_trainer(
        callbacks=[TargetBatchSize(global_batch_size=32, **callback_kw)],
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
    )
    trainer.fit(model, loader)
    return model, [v for _, v in scalars(trainer.logger.log_dir)["target_batch_size/actual_loss"]]


def test_hf_dict_batches_are_weighted_by_their_number_of_samples(tmp_path, recwarn):
    model, actual = fit_text(tmp_path, with_scalar_first)
    assert [n for _, n in model.seen] == [16, 16, 16, 8]
    assert actual == pytest.approx(window_means(model.seen), rel=1e-5)  # (16 x a + 8 x b) / 24
    assert not [w for w in recwarn if "TargetBatchSize" in str(w.message)]


def test_unmeasurable_batches_warn_once_and_count_as_full_batches(tmp_path):
    with pytest.warns(UserWarning, match="cannot find the number of samples .* of type Opaque") as record:
        model, actual = fit_text(tmp_path, opaque)
    ours = [str(w.message) for w in record if "TargetBatchSize" in str(w.message)]
    assert len(ours) == 1 and "batch_size_fn" in ours[0]
    full = [(loss, 16) for loss, _ in model.seen]  # never unit weights mixed with sample counts
    assert actual == pytest.approx(window_means(full), rel=1e-5)


@pytest.mark.parametrize("how", ["batch_size_fn", "training_step"])
def test_the_user_can_give_the_batch_size(tmp_path, recwarn, how):
    kw = (
        {"batch_size_fn": lambda b: len(b.inputs["labels"])}
        if how == "batch_size_fn"
        else {"return_size": True}
    )
    model, actual = fit_text(tmp_path, opaque, **kw)
    assert actual == pytest.approx(window_means(model.seen), rel=1e-5)
    assert not [w for w in recwarn if "TargetBatchSize" in str(w.message)]


def test_ambiguous_leading_dims_warn_once():
    from lightning_tricks.functional.optim.target_batch_size import _leading_dims

    callback = TargetBatchSize(global_batch_size=32)
    batch = {"class_weights": torch.ones(4), "x": torch.zeros(16, 3)}
    assert _leading_dims(batch) == [4, 16]
    with pytest.warns(UserWarning, match=r"different leading dimensions \[4, 16\]"):
        assert callback._batch_weight(batch, None) == 4.0
    with pytest.raises(TypeError, match="batch_size_fn"):
        TargetBatchSize(global_batch_size=32, batch_size_fn=3)
    returns_tensor = TargetBatchSize(global_batch_size=32, batch_size_fn=lambda b: torch.tensor(16))
    with pytest.raises(ValueError, match=r"`batch_size_fn` must return a positive int.*device sync"):
        returns_tensor._batch_weight(batch, None)
