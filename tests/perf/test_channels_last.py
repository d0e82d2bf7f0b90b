"""ChannelsLast: the model's conv weights and the batches reach the model in NHWC."""

from __future__ import annotations

import collections
import warnings

import lightning as L
import pytest
import torch

from lightning_tricks import ChannelsLast
from lightning_tricks.functional import batch_to_channels_last, model_to_channels_last
from tests.helpers import ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer, params_equal, state_of

CL = torch.channels_last


def test_batch_conversion_walks_collections():
    Pair = collections.namedtuple("Pair", "x y")
    x, y, seq = torch.randn(2, 3, 4, 4), torch.arange(2), torch.randn(2, 3, 4)
    out = batch_to_channels_last({"a": [x, y], "b": Pair(x, seq), "c": "text", "i": x.long()})
    assert out["a"][0].is_contiguous(memory_format=CL) and not x.is_contiguous(memory_format=CL)
    assert torch.equal(out["a"][0], x) and out["a"][1] is y and out["c"] == "text"
    assert isinstance(out["b"], Pair) and out["b"].y is seq
    assert not out["i"].is_contiguous(memory_format=CL)  # integer 4-D tensors are not images


def test_model_conversion_keeps_parameters_and_outputs():
    model = SmallCNN()
    params = list(model.parameters())
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert model_to_channels_last(model) == 2
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert model.backbone[0][0].weight.is_contiguous(memory_format=CL)
    assert torch.allclose(model(batch_to_channels_last(x)), expected, atol=1e-5)


class _Probe(L.Callback):
    def __init__(self):
        self.layouts = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        w = pl_module.backbone[0][0].weight
        self.layouts.append((batch[0].is_contiguous(memory_format=CL), w.is_contiguous(memory_format=CL)))


class _DataModuleWithHook(ImageDataModule):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x.clone(), y  # a datamodule hook that returns new (NCHW) tensors


@pytest.mark.parametrize("datamodule_cls", [ImageDataModule, _DataModuleWithHook])
def test_fit_sees_channels_last_batches_and_same_training(datamodule_cls):
    probe = _Probe()
    runs = []
    for callbacks in ([ChannelsLast(), probe], []):
        L.seed_everything(0, verbose=False)
        model = ClassifierModule(arch="cnn")
        trainer = cpu_trainer(callbacks=callbacks, max_epochs=1)
        trainer.fit(model, datamodule=datamodule_cls())
        runs.append(model)
        assert "batch_to_device" not in trainer.strategy.__dict__  # unwrapped at teardown
    assert probe.layouts and all(b and w for b, w in probe.layouts)
    a, b = state_of(runs[0]), state_of(runs[1])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), params_equal(a, b)


def test_batches_false_converts_only_the_model():
    probe = _Probe()
    trainer = cpu_trainer(callbacks=[ChannelsLast(batches=False), probe], max_epochs=1)
    trainer.fit(ClassifierModule(arch="cnn"), datamodule=ImageDataModule())
    assert probe.layouts and all(w and not b for b, w in probe.layouts)


def test_model_without_convolutions_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpu_trainer(callbacks=[ChannelsLast()], max_epochs=1).fit(
            ClassifierModule(arch="mlp"), datamodule=ImageDataModule()
        )
    assert sum("no 4-D parameters" in str(w.message) for w in caught) == 1
    with pytest.raises(TypeError, match="`batches`"):
        ChannelsLast(batches="yes")
