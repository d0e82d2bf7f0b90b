"""GradientMonitor and its functional core."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import lightning_tricks.inspect.gradient_monitor as gm_module
from lightning_tricks import GradientMonitor, NonFiniteGradientError
from lightning_tricks.functional.inspect import IntermediateGrads, layer_grad_norms
from tests.helpers import ClassifierModule, ImageDataModule, cpu_trainer
from tests.helpers.zoo import HFImageClassifier, zoo_loaders, zoo_module


def test_layer_grad_norms_match_manual():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    net(torch.randn(5, 3)).pow(2).sum().backward()
    names, norms = layer_grad_norms(net)
    assert names == ["0", "2"]
    w, b = net[0].weight.grad, net[0].bias.grad
    expected = torch.sqrt(w.pow(2).sum() + b.pow(2).sum())
    assert norms[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert norms[1].item() == pytest.approx(net[2].weight.grad.norm().item(), rel=1e-5)
    _, inf_norms = layer_grad_norms(net, math.inf)
    assert inf_norms[0].item() == pytest.approx(max(w.abs().max(), b.abs().max()).item())


def test_intermediate_grads_equal_retain_grad():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(6, 3)
    with IntermediateGrads(net, ["1"]) as ig:
        net(x).sum().backward()
    h = net[1](net[0](x))
    h.retain_grad()
    net[2](h).sum().backward()
    assert torch.allclose(ig.grads["1"], h.grad)
    assert not net[1]._forward_hooks
    with pytest.raises(ValueError, match="`names` names no submodule 'nope'"):
        IntermediateGrads(net, ["nope"])


def test_intermediate_takes_one_name_globs_and_class_names():
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)], nn.ReLU(), nn.Linear(2, 1))
    x = torch.randn(3, 2)
    for spec, expected in (("12", ["12"]), ("1*", ["1", "10", "11", "12", "13"]), ("ReLU", ["12"])):
        with IntermediateGrads(net, spec) as ig:
            net(x).sum().backward()
        assert sorted(ig.grads) == expected, spec
    with pytest.raises(ValueError, match=r"`names` names no submodule 'RelU'.*did you mean"):
        IntermediateGrads(net, "RelU")


def test_norms_reach_a_csv_logger_under_component_keys_on_logging_steps(tmp_path):
    """Every sample goes through `LightningModule.log` (CSV, EarlyStopping, ModelCheckpoint see it),
    on the Trainer's logging steps, each under its own step."""
    import csv

    monitor = GradientMonitor(intermediate="head")
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = cpu_trainer(logger=logger, callbacks=[monitor], log_every_n_steps=3)
    trainer.fit(ClassifierModule("cnn"), ImageDataModule())  # 8 optimizer steps
    with open(logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("gradient_monitor/grad_norm/total")]
    assert [int(r["step"]) for r in logged] == [2, 5]  # the logging steps, nothing repeated
    for key in ("backbone.0.0", "head.2", "output/head"):
        assert float(logged[-1][f"gradient_monitor/grad_norm/{key}"]) == pytest.approx(
            monitor.last_norms[key]
        )
    assert "gradient_monitor/grad_norm/total" in trainer.callback_metrics


def _fit(tmp_path, monitor, model=None, **trainer_args):
    model = model or ClassifierModule("cnn")
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = cpu_trainer(logger=logger, callbacks=[monitor], log_every_n_steps=1, **trainer_args)
    trainer.fit(model, ImageDataModule())
    return logger, model


def test_logs_norms_histograms_and_intermediate(tmp_path):
    monitor = GradientMonitor(every_n_steps=3, log_histograms=True, intermediate=["backbone.0"])
    logger, model = _fit(tmp_path, monitor)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("gradient_monitor/grad_norm/head.2")]
    assert steps == [0, 3, 6]  # 8 optimizer steps, sampled every 3rd
    for tag in (
        "gradient_monitor/grad_norm/backbone.0.0",
        "gradient_monitor/grad_norm/total",
        "gradient_monitor/grad_norm/output/backbone.0",
    ):
        assert len(acc.Scalars(tag)) == 3
    assert "gradient_monitor/grad_hist/head.2" in acc.Tags()["histograms"]  # one per layer
    assert monitor.intermediate_grads["backbone.0"].shape == (16, 8, 8, 8)
    assert all(not m._forward_hooks for m in model.modules())


def test_norms_are_computed_only_on_sampled_steps(tmp_path, monkeypatch):
    calls = []
    real = gm_module.layer_grad_norms
    monkeypatch.setattr(gm_module, "layer_grad_norms", lambda *a, **k: calls.append(1) or real(*a, **k))
    hooks_seen = []

    class Probe(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            hooks_seen.append(sum(len(m._forward_hooks) for m in pl_module.modules()))

    monitor = GradientMonitor(every_n_steps=4, intermediate=["head"])
    trainer = cpu_trainer(callbacks=[monitor, Probe()])
    trainer.fit(ClassifierModule("cnn"), ImageDataModule())
    assert len(calls) == 2  # steps 0 and 4 of 8
    assert hooks_seen == [1, 0, 0, 0, 1, 0, 0, 0]  # the output hook exists only on monitored steps


class NaNGradModule(ClassifierModule):
    """The gradient of ``backbone.1.0.weight`` becomes NaN from the given step on."""

    def __init__(self, bad_step: int = 2):
        super().__init__("cnn")
        self.bad_step = bad_step
        self.backbone[1][0].weight.register_hook(self._poison)

    def _poison(self, grad):
        return grad * float("nan") if self.global_step >= self.bad_step else grad


def test_detect_nonfinite_raise_names_the_layer(tmp_path):
    with pytest.raises(NonFiniteGradientError, match=r"'backbone\.1\.0' is NaN at step 2"):
        _fit(tmp_path, GradientMonitor(every_n_steps=1, on_error="raise"), NaNGradModule(2))


def test_detect_nonfinite_warn_keeps_training_and_silent_on_finite(tmp_path):
    with pytest.warns(UserWarning, match=r"'backbone\.1\.0' is NaN"):
        _fit(tmp_path / "a", GradientMonitor(every_n_steps=2, on_error="warn"), NaNGradModule(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*(LeafSpec|workers|litlogger).*")
        _fit(tmp_path / "b", GradientMonitor(every_n_steps=1, on_error="raise"))


@pytest.mark.gpu
def test_norms_are_unscaled_under_fp16_amp(tmp_path):
    """Lightning unscales before ``on_before_optimizer_step``: the norms equal fp32 norms, not 65536x."""
    torch.manual_seed(0)
    plain = GradientMonitor(every_n_steps=100)
    _fit(tmp_path / "fp32", plain, max_epochs=1, accelerator="cuda")
    torch.manual_seed(0)
    amp = GradientMonitor(every_n_steps=100)
    _fit(tmp_path / "fp16", amp, max_epochs=1, accelerator="cuda", precision="16-mixed")
    ratio = amp.last_norms["total"] / plain.last_norms["total"]
    assert 0.9 < ratio < 1.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_error"):
        GradientMonitor(on_error="crash")
    with pytest.raises(ValueError, match="norm_type"):
        GradientMonitor(norm_type=0.5)
    assert GradientMonitor(norm_type=float("inf")).norm_type == math.inf


def test_last_norms_survive_trainer_test():
    monitor = GradientMonitor(every_n_steps=1)
    trainer = cpu_trainer(callbacks=[monitor], max_epochs=1)
    model = ClassifierModule()
    trainer.fit(model, datamodule=ImageDataModule())
    norms = dict(monitor.last_norms)
    assert norms
    trainer.test(model, datamodule=ImageDataModule(), verbose=False)
    assert monitor.last_norms == norms


# ------------------------------------------------------------------ zoo models (issue 11)
STAGE0 = "model.resnet.encoder.stages.0"
STAGE0_LAST = "model.resnet.encoder.stages.0.layers.0.layer.1.normalization"  # last to run in stage 0


class PoisonStage(HFImageClassifier):
    """HF ResNet whose stage-0 output gradient is NaN on one step: the NaN arises there and
    spreads to every layer before it (the stem first in model order), none after it."""

    def __init__(self, bad_step: int):
        super().__init__("resnet", lr=0.0)
        self.bad_step = bad_step
        self.get_submodule(STAGE0).register_forward_hook(self._poison_output)

    def _poison_output(self, module, args, output):
        if self.training and self.global_step == self.bad_step:
            output.register_hook(lambda g: g * float("nan"))


def test_nonfinite_on_an_unsampled_step_is_caught_with_the_layer_nearest_its_origin(tmp_path):
    train, _ = zoo_loaders("resnet", n=32, batch_size=8)  # 4 steps; no logging step (log_every_n_steps=50)
    monitor = GradientMonitor(on_error="raise")
    with pytest.raises(NonFiniteGradientError, match=rf"'{STAGE0_LAST}' is NaN at step 1 ") as err:
        cpu_trainer(max_epochs=1, callbacks=[monitor]).fit(PoisonStage(bad_step=1), train)
    assert "model.resnet.embedder" not in str(err.value)  # not the stem, first in model order


def test_a_step_the_fp16_scaler_skips_is_counted_not_raised(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    class InfOnce(Callback):
        def on_after_backward(self, trainer, pl_module):  # scaled gradients, before unscaling
            if trainer.global_step == 2:
                next(pl_module.parameters()).grad.view(-1)[0] = float("inf")

    train, _ = zoo_loaders("resnet", n=32, batch_size=8)
    monitor = GradientMonitor(every_n_steps=1, on_error="raise")
    scaler = torch.amp.GradScaler("cpu")
    trainer = cpu_trainer(
        max_epochs=1,
        callbacks=[monitor, InfOnce()],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )
    trainer.fit(zoo_module("resnet"), train)
    assert trainer.global_step == 4 and monitor.skipped_steps == 1
    assert scaler.get_scale() < 2.0**16  # the scaler did skip it and lower its scale


@pytest.mark.parametrize("name", ["bert", "resnet"])
def test_intermediate_tuple_and_model_output_modules_record_gradients(tmp_path, name):
    modules = {
        "bert": ["model.bert.encoder.layer.0", "model.bert.encoder", "model.bert.embeddings"],
        "resnet": [STAGE0, "model.resnet.encoder", "model.resnet"],  # tensor, BaseModelOutput, ...
    }[name]
    train, _ = zoo_loaders(name, n=8, batch_size=8)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = GradientMonitor(every_n_steps=1, intermediate=modules)
    trainer = cpu_trainer(max_epochs=1, logger=logger, callbacks=[monitor], log_every_n_steps=1)
    model = zoo_module(name)
    trainer.fit(model, train)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    for m in modules:
        assert acc.Scalars(f"gradient_monitor/grad_norm/output/{m}")[0].value > 0
    grads = monitor.intermediate_grads
    if name == "bert":
        assert grads["model.bert.encoder.layer.0"].shape == (8, 12, 16)  # the hidden states
        assert grads["model.bert.encoder"].shape == (8, 12, 16)  # last_hidden_state
    else:
        assert grads[STAGE0].shape == (8, 8, 8, 8)
        assert grads["model.resnet.encoder"].shape == (8, 16, 4, 4)


def test_intermediate_module_without_a_gradient_is_named():
    train, _ = zoo_loaders("resnet", n=8, batch_size=8)
    monitor = GradientMonitor(every_n_steps=1, intermediate=["model.resnet.embedder.pooler"])
    model = zoo_module("resnet")

    class NoGradPooler(torch.nn.Module):  # e.g. a pooler fed from a detached/frozen stem
        def forward(self, x):
            return x.detach()

    model.model.resnet.embedder.pooler = NoGradPooler()
    with pytest.warns(UserWarning, match="'model.resnet.embedder.pooler' holds no tensor that requires grad"):
        cpu_trainer(max_epochs=1, callbacks=[monitor]).fit(model, train)


@pytest.mark.parametrize("name", ["resnet", "vit", "bert"])
def test_zoo_norms_through_tensorboard(tmp_path, name):
    """Per-layer norms of every layer with parameters; the total is their 2-norm."""
    train, _ = zoo_loaders(name, n=8, batch_size=8)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = GradientMonitor(every_n_steps=1)
    model = zoo_module(name)
    cpu_trainer(max_epochs=1, logger=logger, callbacks=[monitor], log_every_n_steps=1).fit(model, train)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    layers = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.grad is not None}
    prefix = "gradient_monitor/grad_norm/"
    tags = {t[len(prefix) :] for t in acc.Tags()["scalars"] if t.startswith(prefix)}
    assert layers <= tags and "total" in tags
    per_layer = [acc.Scalars(f"{prefix}{n}")[0].value for n in layers]
    assert acc.Scalars(f"{prefix}total")[0].value == pytest.approx(
        math.sqrt(sum(v * v for v in per_layer)), rel=1e-4
    )


class _RecordOutputNorms(Callback):
    """Records the monitor's output-gradient norm after every optimizer step."""

    def __init__(self, monitor, key):
        self.monitor, self.key, self.seen = monitor, key, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.monitor.every_n_steps == 1:  # the step just taken was sampled
            self.seen[trainer.global_step - 1] = self.monitor.last_norms.get(self.key)


def _output_norms_per_sampled_step(tmp_path, compiled: bool):
    from lightning_tricks import Compile

    torch._dynamo.reset()
    monitor = GradientMonitor(every_n_steps=2, intermediate="backbone", on_error="ignore")
    probe = _RecordOutputNorms(monitor, "output/backbone")
    callbacks = [*([Compile(backend="eager")] if compiled else []), monitor, probe]
    L.seed_everything(0, verbose=False)
    trainer = cpu_trainer(
        max_epochs=2, callbacks=callbacks, default_root_dir=str(tmp_path), log_every_n_steps=1
    )
    # 28 samples in batches of 8: the unsampled step 3 has 4 samples, and dynamo recompiles
    # there (a hook-free graph, with a dynamic batch size that later steps reuse)
    trainer.fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule(n_train=28, batch_size=8))
    return probe.seen


def test_compile_output_gradient_norms_are_fresh_on_every_sampled_step(tmp_path):
    """Issue 17.2: under Compile, a sampled step's output-gradient hooks fire (the step runs
    eagerly), so each sampled step logs its own norm, as without Compile, never a stale one."""
    eager = _output_norms_per_sampled_step(tmp_path / "eager", compiled=False)
    compiled = _output_norms_per_sampled_step(tmp_path / "compiled", compiled=True)
    assert sorted(compiled) == sorted(eager) == [0, 2, 4, 6]
    assert None not in compiled.values()
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_compile_with_freeze_backbone_captures_after_unfreezing(tmp_path):
    """Issue 17.2: with FreezeBackbone and Compile, the output gradients of an unfrozen
    module are captured on the sampled steps after unfreezing."""
    from lightning_tricks import Compile, FreezeBackbone

    torch._dynamo.reset()
    # unfreezing at step 4 (unsampled) recompiles without the hooks; step 6 is sampled
    monitor = GradientMonitor(every_n_steps=3, intermediate="backbone.0", on_error="ignore")
    probe = _RecordOutputNorms(monitor, "output/backbone.0")
    callbacks = [FreezeBackbone(unfreeze_at_epoch=1), Compile(backend="eager"), monitor, probe]
    L.seed_everything(0, verbose=False)
    trainer = cpu_trainer(
        max_epochs=2, callbacks=callbacks, default_root_dir=str(tmp_path), log_every_n_steps=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen epoch: the backbone's output holds no gradient
        trainer.fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule(n_train=32, batch_size=8))
    assert sorted(probe.seen) == [0, 3, 6]
    assert probe.seen[0] is None and probe.seen[3] is None  # frozen: no output gradient
    assert probe.seen[6] is not None and probe.seen[6] > 0  # unfrozen at epoch 1 (steps 4-7)
