"""FeatureExtractor / extract_features / FeaturePredict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tricks import FeaturePredict
from lightning_tricks.functional import FeatureExtractor, extract_features
from tests.helpers import ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; hooks still work."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.calls = []

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = h.relu()
        h = self.b(h)
        self.calls.append("c")
        return self.c(h)


def test_untraceable_model_and_values():
    model = Untraceable()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    x = torch.randn(3, 4)
    feats = extract_features(model, x, ["b", "a"], stop_early=False)
    assert list(feats) == ["b", "a"]
    h = model.a(x)
    torch.testing.assert_close(feats["a"], h)
    torch.testing.assert_close(feats["b"], model.b(h.relu() if h.sum() > 0 else h))


def test_stop_early_skips_later_layers():
    model = Untraceable()
    extract_features(model, torch.randn(2, 4), ["a", "b"], stop_early=True)
    assert model.calls == []  # the forward pass stopped after `b`
    extract_features(model, torch.randn(2, 4), ["a"], stop_early=False)
    assert model.calls == ["c"]


def test_hooks_removed_on_exit_even_after_errors():
    model = SmallCNN()
    fx = FeatureExtractor(model, ["backbone.0", "head"])
    with pytest.raises(RuntimeError, match="boom"), fx:
        assert len(model.backbone[0]._forward_hooks) == 1
        raise RuntimeError("boom")
    assert not model.backbone[0]._forward_hooks and not model.head._forward_hooks
    fx(torch.randn(1, 3, 8, 8))
    assert not model.backbone[0]._forward_hooks


def test_unknown_names_suggest_near_matches():
    with pytest.raises(ValueError, match=r"no submodule 'backbone\.00'.*did you mean .*'backbone\.0'"):
        FeatureExtractor(SmallCNN(), ["backbone.00"])
    with pytest.raises(ValueError, match="`layers`"):
        FeatureExtractor(SmallCNN(), ["zzz"])


def test_detach_false_keeps_the_graph():
    model = SmallCNN()
    feats = FeatureExtractor(model, ["backbone.1"], detach=False)(torch.randn(2, 3, 8, 8))
    feats["backbone.1"].sum().backward()
    assert model.backbone[0][0].weight.grad is not None


class FeatureModel(FeaturePredict, ClassifierModule):
    feature_layers = ("backbone.0", "backbone.1")


class FeatureAndOutput(FeaturePredict, ClassifierModule):
    feature_layers = ("backbone.1",)
    feature_include_output = True


def test_trainer_predict_returns_features():
    model = FeatureModel()
    out = cpu_trainer().predict(model, datamodule=ImageDataModule(n_val=20, batch_size=8))
    assert [o["backbone.0"].shape[0] for o in out] == [8, 8, 4]
    assert out[0]["backbone.1"].shape == (8, 16, 8, 8)
    model2 = FeatureAndOutput()
    out2 = cpu_trainer().predict(model2, datamodule=ImageDataModule(n_val=8, batch_size=8))
    dm = ImageDataModule(n_val=8)
    dm.setup()
    with torch.no_grad():
        torch.testing.assert_close(out2[0]["output"], model2.eval()(dm.val_set.tensors[0]))
    assert not any(m._forward_hooks for m in model2.modules())


def test_feature_predict_wrong_layer_fails_before_first_batch():
    class Bad(FeaturePredict, ClassifierModule):
        feature_layers = ("backbone.7",)

    with pytest.raises(ValueError, match="feature_layers"):
        cpu_trainer().predict(Bad(), datamodule=ImageDataModule(n_val=8))


def test_layers_follow_the_naming_rule_globs_and_class_names():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    by_glob = extract_features(model, x, "backbone.*", stop_early=False)  # a lone string is one entry
    assert list(by_glob) == ["backbone.0", "backbone.1"]
    by_class = FeatureExtractor(model, ["Conv2d", nn.Linear])
    assert by_class.layers == ("backbone.0.0", "backbone.1.0", "head.2")
    feats = by_class(x)
    torch.testing.assert_close(feats["head.2"], model(x))  # the last Linear is the output
    deep = extract_features(model, x, ["head", "**.1"], stop_early=False)  # entry order, then model order
    assert list(deep) == ["head", "backbone.0.1", "backbone.1", "backbone.1.1", "head.1"]
    with pytest.raises(ValueError, match="`layers` names no submodule 'Conv3d'"):
        FeatureExtractor(model, "Conv3d")


def test_feature_predict_takes_globs():
    class Globbed(FeaturePredict, ClassifierModule):
        feature_layers = "backbone.*"

    out = cpu_trainer().predict(Globbed(), datamodule=ImageDataModule(n_val=8, batch_size=8))
    assert list(out[0]) == ["backbone.0", "backbone.1"]
