"""TargetBatchSize through a real Trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks import TargetBatchSize
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


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
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
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
    logged = scalars(trainer.logger.log_dir)
    actual = logged["actual_loss"]
    assert [s for s, _ in actual] == [0, 1, 2, 3]
    assert [v for _, v in actual] == pytest.approx(expected, rel=1e-5)
    if n_train == 40:  # the last window holds one batch; Lightning's loss is half of it
        lightning_loss = model.seen[2][0] / 2
        assert actual[1][1] == pytest.approx(model.seen[2][0], rel=1e-5)
        assert actual[1][1] != pytest.approx(lightning_loss, rel=1e-3)
    assert logged["effective_batch_size"] == [(0, 32.0)]


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
    assert "actual_loss" not in logged and "effective_batch_size" in logged


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
        strategy="ddp_spawn",
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
    assert [v for _, v in logged["actual_loss"]] == pytest.approx(expected, rel=1e-5)
