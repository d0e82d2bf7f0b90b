"""AdaptiveGradientClipping and AutoClip through a real Trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_tricks import AdaptiveGradientClipping, AutoClip
from lightning_tricks.functional import adaptive_clip_grad_
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer, params_equal, state_of


class NormSpy(Callback):
    """Records the total gradient norm (and its finiteness) at ``on_before_optimizer_step``."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def fp16_cpu(init_scale: float = 2.0**12, **scaler_kwargs) -> MixedPrecision:
    # Lightning turns precision="16-mixed" into bf16 on CPU; the plugin keeps a real GradScaler
    return MixedPrecision(
        "16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=init_scale, **scaler_kwargs)
    )


def test_agc_matches_a_hand_written_loop():
    """Same weights as a plain loop that calls the functional core on all but the classifier."""
    torch.manual_seed(0)
    model = ClassifierModule(arch="cnn", lr=0.1)
    reference = ClassifierModule(arch="cnn", lr=0.1)
    reference.load_state_dict(model.state_dict())
    dm = ImageDataModule()
    cpu_trainer(callbacks=[AdaptiveGradientClipping(clip_factor=0.01)], max_epochs=1).fit(model, dm)

    dm.setup()
    opt = reference.configure_optimizers()
    classifier = {id(p) for p in reference.head[2].parameters()}  # last nn.Linear
    for x, y in dm.train_dataloader():
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        adaptive_clip_grad_([p for p in reference.parameters() if id(p) not in classifier], 0.01, 1e-3)
        opt.step()
    assert not params_equal(state_of(model), state_of(reference))


def test_agc_skip_classifier_and_exclude():
    cb = AdaptiveGradientClipping(clip_factor=1e-4, exclude=["backbone.1"])
    model = ClassifierModule(arch="mlp")
    spy_head = {}

    class HeadSpy(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            spy_head.setdefault("before", pl_module.head.weight.grad.clone())

    class HeadSpyAfter(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            spy_head.setdefault("after", pl_module.head.weight.grad.clone())

    cpu_trainer(callbacks=[HeadSpy(), cb, HeadSpyAfter()], max_epochs=1, limit_train_batches=1).fit(
        model, ImageDataModule()
    )
    assert torch.equal(spy_head["before"], spy_head["after"])  # the classifier is left alone
    names = {n for n, p in model.named_parameters() if id(p) in cb._excluded_ids}
    assert names == {"backbone.1.weight", "backbone.1.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="`exclude` entry 'encodr'"):
        cpu_trainer(callbacks=[AdaptiveGradientClipping(exclude=["encodr"])], max_epochs=1).fit(
            ClassifierModule(arch="mlp"), ImageDataModule()
        )


@pytest.mark.parametrize("cls,prefix", [(AdaptiveGradientClipping, "agc"), (AutoClip, "autoclip")])
def test_logs_norms_and_fraction_on_logging_steps_only(tmp_path, cls, prefix):
    before, after = NormSpy(), NormSpy()
    cb = cls(clip_factor=0.01) if cls is AdaptiveGradientClipping else cls(percentile=10)
    calls = []
    model = ClassifierModule()
    original_log = model.log
    model.log = lambda name, *a, **k: (calls.append(name), original_log(name, *a, **k))[1]
    trainer = cpu_trainer(
        callbacks=[before, cb, after],
        max_epochs=2,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=3,
    )
    trainer.fit(model, ImageDataModule(n_train=96))  # 6 steps per epoch
    logged = scalars(trainer.logger.log_dir)
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
    if cls is AutoClip:
        assert len(logged["autoclip/clip_value"]) == 4


class RatioSpy(Callback):
    """Records max over units of ||G_i|| / max(||W_i||, eps), the quantity AGC compares to clip_factor."""

    def __init__(self):
        self.ratios: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        from lightning_tricks.functional import unitwise_norm

        self.ratios.append(
            max(
                float((unitwise_norm(p.grad) / unitwise_norm(p.detach()).clamp(min=1e-3)).max())
                for p in pl_module.parameters()
            )
        )


def test_mixed_precision_decides_on_unscaled_gradients(tmp_path):
    """With a GradScaler at 2**12, the hook sees unscaled gradients: a clip factor above
    every unscaled unit ratio but below the scaled ones must not clip anything."""
    spy, ratios = NormSpy(), RatioSpy()
    model = ClassifierModule(lr=0.01)
    plain = ClassifierModule(lr=0.01)
    plain.load_state_dict(model.state_dict())
    clip_factor = 200.0
    cb = AdaptiveGradientClipping(clip_factor=clip_factor, skip_classifier=False)
    trainer = cpu_trainer(
        callbacks=[spy, ratios, cb],
        plugins=[fp16_cpu()],
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
    )
    trainer.fit(model, ImageDataModule())
    scale = trainer.precision_plugin.scaler.get_scale()
    assert scale >= 2.0**12
    # the setting is discriminating: unscaled ratios are below clip_factor, scaled ones above
    assert max(ratios.ratios) < clip_factor < min(ratios.ratios) * scale
    logged = scalars(trainer.logger.log_dir)
    pre = [v for _, v in logged["agc/grad_norm_pre_clip"]]
    assert pre == pytest.approx(spy.norms, rel=1e-5)  # unscaled: not 4096x larger
    assert [v for _, v in logged["agc/clipped_fraction"]] == [0.0] * 4
    cpu_trainer(plugins=[fp16_cpu()], max_epochs=1).fit(plain, ImageDataModule())
    assert not params_equal(state_of(model), state_of(plain))  # nothing was clipped


def test_autoclip_history_is_unscaled_and_skips_overflow_steps():
    """A huge initial loss scale overflows the first steps: GradScaler skips them, and
    AutoClip records exactly the unscaled norms of the other steps."""
    spy = NormSpy()
    cb = AutoClip(percentile=50)
    trainer = cpu_trainer(
        callbacks=[spy, cb], plugins=[fp16_cpu(init_scale=2.0**40, backoff_factor=2.0**-8)], max_epochs=1
    )
    trainer.fit(ClassifierModule(), ImageDataModule(n_train=128))
    finite = [n for n in spy.norms if n == n and n != float("inf")]
    assert 0 < len(finite) < len(spy.norms)  # some steps overflowed, some did not
    history = cb.clipper.history()
    assert torch.isfinite(history).all()
    assert history.tolist() == pytest.approx(finite, rel=1e-5)


def test_autoclip_state_in_checkpoint(tmp_path):
    cb = AutoClip(percentile=10, history_size=5)
    trainer = cpu_trainer(callbacks=[cb], max_epochs=1)
    trainer.fit(ClassifierModule(), ImageDataModule())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["callbacks"][cb.state_key]["clipper"]
    assert state["n_valid"] == 4 and torch.equal(state["buffer"][:4], cb.clipper.history())
    other = AutoClip(percentile=10, history_size=5)
    other.load_state_dict(ckpt["callbacks"][cb.state_key])
    assert torch.equal(other.clipper.history(), cb.clipper.history())


def test_sharded_strategy_is_refused():
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_tricks.optim.gradient_clipping import _check_strategy

    class FakeTrainer:
        strategy = FSDPStrategy.__new__(FSDPStrategy)

    with pytest.raises(Exception, match="unsharded"):
        _check_strategy(FakeTrainer(), "AutoClip")


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [AdaptiveGradientClipping, AutoClip])
def test_gpu_16_mixed_no_sync_on_non_logging_steps(cls):
    """Real precision="16-mixed" on CUDA: clipping raises no host sync on steps that do not log."""

    class SyncOn(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not trainer._logger_connector.should_update_logs:
                torch.cuda.set_sync_debug_mode("error")

    class SyncOff(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            torch.cuda.set_sync_debug_mode(0)

    spy = NormSpy()
    cb = cls()
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
    if cls is AutoClip:
        finite = [n for n in spy.norms if n == n and n != float("inf")]
        assert cb.clipper.history().tolist() == pytest.approx(finite, rel=1e-4)
