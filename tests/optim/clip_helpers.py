"""What the AGC and AutoClip tests share: gradient spies, mixed precision on CPU, reading logs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks.functional import unitwise_norm
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer


class NormSpy(Callback):
    """Records the total gradient norm (and its finiteness) at ``on_before_optimizer_step``."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


class RatioSpy(Callback):
    """Records max over units of ||G_i|| / max(||W_i||, eps), the quantity AGC compares to clip_factor."""

    def __init__(self):
        self.ratios: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.ratios.append(
            max(
                float((unitwise_norm(p.grad) / unitwise_norm(p.detach()).clamp(min=1e-3)).max())
                for p in pl_module.parameters()
            )
        )


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars: tag -> [(step, value)]."""
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def csv_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """A CSVLogger's metrics.csv read back: key -> [(step, value)] for the rows that have it."""
    with open(Path(log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                out.setdefault(key, []).append((int(row["step"]), float(value)))
    return out


def fp16_cpu(init_scale: float = 2.0**12, **scaler_kwargs) -> MixedPrecision:
    # Lightning turns precision="16-mixed" into bf16 on CPU; the plugin keeps a real GradScaler
    return MixedPrecision(
        "16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=init_scale, **scaler_kwargs)
    )


def check_logs_norms_and_fraction_on_logging_steps_only(tmp_path, cb, prefix: str) -> dict:
    """Fit with ``cb`` between two NormSpys and a CSVLogger; the logged norms and clipped
    fraction must be those the spies saw, on the logging steps only. Returns the logs."""
    before, after = NormSpy(), NormSpy()
    calls = []
    model = ClassifierModule()
    original_log = model.log
    model.log = lambda name, *a, **k: (calls.append(name), original_log(name, *a, **k))[1]
    trainer = cpu_trainer(
        callbacks=[before, cb, after],
        max_epochs=2,
        logger=CSVLogger(str(tmp_path), name="csv"),
        log_every_n_steps=3,
    )
    trainer.fit(model, ImageDataModule(n_train=96))  # 6 steps per epoch
    logged = csv_scalars(trainer.logger.log_dir)
    pre, post = logged[f"{prefix}/grad_norm_pre_clip"], logged[f"{prefix}/grad_norm_post_clip"]
    assert [s for s, _ in pre] == [2, 5, 8, 11]
    # only the logging steps call self.log for this callback
    assert sum(name == f"{prefix}/grad_norm_pre_clip" for name in calls) == 4
    for step, value in pre:
        assert value == pytest.approx(before.norms[step], rel=1e-5)
    for step, value in post:
        assert value == pytest.approx(after.norms[step], rel=1e-5)
    fractions = [v for _, v in logged[f"{prefix}/clipped_fraction"]]
    clipped = [a < b * (1 - 1e-6) for a, b in zip(after.norms, before.norms)]
    expected = [sum(clipped[i - 2 : i + 1]) / 3 for i in (2, 5, 8, 11)]
    assert fractions == pytest.approx(expected)
    return logged


def check_gpu_16_mixed_no_sync_on_non_logging_steps(cb) -> list[float]:
    """Real precision="16-mixed" on CUDA: clipping raises no host sync on steps that do
    not log. Returns the total norms the callback saw."""

    class SyncOn(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not trainer._logger_connector.should_update_logs:
                torch.cuda.set_sync_debug_mode("error")

    class SyncOff(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            torch.cuda.set_sync_debug_mode(0)

    spy = NormSpy()
    trainer = cpu_trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        deterministic=False,
        callbacks=[spy, SyncOn(), cb, SyncOff()],
        max_epochs=1,
        log_every_n_steps=3,
    )
    try:
        trainer.fit(ClassifierModule(), ImageDataModule(n_train=128))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert isinstance(trainer.precision_plugin.scaler, torch.amp.GradScaler)
    return spy.norms
