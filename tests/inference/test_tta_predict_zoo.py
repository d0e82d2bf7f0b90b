"""TTA, FeatureExtractor and FeaturePredict on third-party models (the HF zoo), against ttach."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import ttach as tta
from torch import nn

from lightning_tricks.functional.inference.features import FeatureExtractor
from lightning_tricks.functional.inference.tta_predict import tta_predict
from lightning_tricks.functional.inference.views import parse_views
from lightning_tricks.inference.features import FeaturePredict
from lightning_tricks.inference.tta_predict import TTAPredict
from tests.helpers.utils import cpu_trainer
from tests.helpers.zoo import (
    IMAGE_SIZE,
    VIT_IMAGE_SIZE,
    HFImageClassifier,
    HFTextClassifier,
    TokenDataset,
    TupleOutputNet,
    hf_resnet,
    hf_segformer,
    hf_vit,
    make_zoo_images,
)

# ttach's d4 in our notation (ttach: hflip in {no, yes} x rotation in {0, 90, 180, 270})
D4 = ["identity", "rot90", "rot180", "rot270", "hflip", "hflip+rot90", "hflip+rot180", "hflip+rot270"]


class Logits(nn.Module):
    """What users wrote before ModelOutput was accepted: a module returning ``.logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def segformer():
    torch.manual_seed(0)
    return hf_segformer().eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return hf_resnet()


# --------------------------------------------------------------------------- defect 11: dense at H/4


def test_segformer_quarter_resolution_logits_equal_ttach_d4(segformer):
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    ref = tta.SegmentationTTAWrapper(segformer, tta.aliases.d4_transform(), "mean", output_mask_key="logits")
    with torch.no_grad():
        expected = ref(x)["logits"]
    assert expected.shape == (2, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)  # ttach un-flips H/4 masks fine
    ours = tta_predict(Logits(segformer), x, D4, "mean")
    assert _max_diff(ours, expected) <= 1e-5


def test_segformer_non_square_rotations_are_inverted(segformer):
    x = torch.randn(2, 3, 32, 24)  # logits 8x6; rot90 views give 6x8 logits
    views = ["hflip", "rot90", "vflip+rot270"]
    _, per_view = tta_predict(Logits(segformer), x, views, return_views=True)
    with torch.no_grad():
        for v, got in zip(parse_views(["identity", *views]), per_view):
            back = segformer(pixel_values=v.apply(x)).logits
            for part in reversed(getattr(v, "parts", (v,))):  # explicit un-flipping, last part first
                if part.name == "hflip":
                    back = back.flip(-1)
                elif part.name == "vflip":
                    back = back.flip(-2)
                elif part.name.startswith("rot"):
                    back = torch.rot90(back, -int(part.name[3:]) // 90, dims=(-2, -1))
            assert _max_diff(got, back) <= 1e-5, v


@pytest.mark.parametrize("dense", [None, True])
def test_segformer_scale_views_resize_back_to_the_output_resolution(segformer, dense):
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    _, per_view = tta_predict(Logits(segformer), x, ["hflip", "scale:0.5"], dense=dense, return_views=True)
    assert per_view.shape == (3, 2, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    with torch.no_grad():
        half = segformer(pixel_values=F.interpolate(x, scale_factor=0.5, mode="bilinear")).logits
    expected = F.interpolate(half, size=(IMAGE_SIZE // 4,) * 2, mode="bilinear", align_corners=False)
    assert _max_diff(per_view[2], expected) <= 1e-5


def test_dense_true_on_class_logits_is_refused(resnet):
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match=r"`dense`=True.*\(2, 4\)"):
        tta_predict(Logits(resnet), x, ["hflip"], dense=True)


# --------------------------------------------------------------------------- defect 12: ModelOutput


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_model_output_classifiers_equal_ttach_d4(arch):
    torch.manual_seed(0)
    model = hf_resnet() if arch == "resnet" else hf_vit()
    size = IMAGE_SIZE if arch == "resnet" else VIT_IMAGE_SIZE
    x = torch.randn(3, 3, size, size)
    model.eval()
    with torch.no_grad():
        ref = tta.ClassificationTTAWrapper(
            model, tta.aliases.d4_transform(), "mean", output_label_key="logits"
        )
        expected = ref(x)["logits"]
    model.train()
    assert _max_diff(tta_predict(model, x, D4, "mean"), expected) <= 1e-5  # default: `.logits`
    assert _max_diff(tta_predict(model, x, D4, "mean", output="logits"), expected) <= 1e-5
    assert _max_diff(tta_predict(model, x, D4, "mean", output=lambda o: o.logits), expected) <= 1e-5
    assert model.training  # modes restored


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_batchnorm_stats_untouched_and_modes_restored_even_through_a_lambda(resnet):
    resnet.train()
    resnet.resnet.embedder.eval()  # a mixed state must come back as it was
    modes = {n: m.training for n, m in resnet.named_modules()}
    before = _bn_state(resnet)
    x = 3 + torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = tta_predict(resnet, x, ["hflip", "vflip"])
    out_lambda = tta_predict(lambda t: resnet(pixel_values=t).logits, x, ["hflip", "vflip"])
    after = _bn_state(resnet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in resnet.named_modules()} == modes
    assert _max_diff(out, out_lambda) <= 1e-6
    resnet.eval()
    with torch.no_grad():
        expected = torch.stack(
            [resnet(pixel_values=v.apply(x)).logits for v in parse_views(["identity", "hflip", "vflip"])]
        )
    assert _max_diff(out, expected.mean(0)) <= 1e-5


def test_tuple_and_dict_outputs_pick_element_zero_or_the_named_one():
    torch.manual_seed(0)
    net = TupleOutputNet().eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    views = parse_views(["identity", "hflip"])
    with torch.no_grad():
        logits = torch.stack([net(v.apply(x))[0] for v in views]).mean(0)
        feats = torch.stack([net(v.apply(x))[1] for v in views]).mean(0)
    assert _max_diff(tta_predict(net, x, ["hflip"]), logits) <= 1e-6
    assert _max_diff(tta_predict(net, x, ["hflip"], output=1), feats) <= 1e-6
    as_dict = lambda t: {"a": net(t)[1], "logits": net(t)[0]}  # noqa: E731
    assert _max_diff(tta_predict(as_dict, x, ["hflip"]), logits) <= 1e-6
    assert _max_diff(tta_predict(as_dict, x, ["hflip"], output="a"), feats) <= 1e-6
    with pytest.raises(ValueError, match=r"`output`='nope'.*available: a, logits"):
        tta_predict(as_dict, x, ["hflip"], output="nope")
    with pytest.raises(TypeError, match="`output`"):
        tta_predict(net, x, ["hflip"], output=2.5)


# --------------------------------------------------------------------------- defect 13: TTAPredict kwargs


class KeywordTTA(TTAPredict, HFImageClassifier):
    """A user's module: keyword call in predict_step, forward returning the ModelOutput."""

    tta_views = ("hflip", "vflip")

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(pixel_values=batch[0]).logits


def test_tta_predict_mixin_augments_keyword_inputs():
    torch.manual_seed(0)
    model = KeywordTTA("resnet")
    x, y = make_zoo_images(8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    preds = torch.cat(cpu_trainer().predict(model, loader))
    model.eval()
    with torch.no_grad():
        plain = model(pixel_values=x).logits
        expected = torch.stack(
            [model(pixel_values=v.apply(x)).logits for v in parse_views(["identity", "hflip", "vflip"])]
        ).mean(0)
    assert _max_diff(preds, expected) <= 1e-5
    assert _max_diff(preds, plain) > 1e-4  # TTA really happened


def test_tta_predict_mixin_refuses_calls_it_cannot_augment():
    model = KeywordTTA("resnet")
    model._tta_install()
    try:
        x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
        with pytest.raises(TypeError, match="several tensors"):
            model(pixel_values=x, labels=torch.zeros(2, dtype=torch.long))
    finally:
        model._tta_uninstall()


# --------------------------------------------------------------------------- defect 14: detach nested


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)


def test_feature_extractor_detaches_model_outputs_and_tuples(resnet):
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    feats = FeatureExtractor(resnet, ["resnet", "resnet.encoder"])(x)
    assert type(feats["resnet"]).__name__.endswith("Output") or "Output" in type(feats["resnet"]).__name__
    tensors = list(_tensors(feats))
    assert len(tensors) >= 3 and all(t.grad_fn is None and not t.requires_grad for t in tensors)
    wrapped = nn.Sequential(TupleOutputNet())
    tup = FeatureExtractor(wrapped, ["0"])(x)["0"]
    assert isinstance(tup, tuple) and len(tup) == 2 and all(t.grad_fn is None for t in tup)
    kept = FeatureExtractor(resnet, ["resnet"], detach=False)(x)["resnet"]
    assert kept.pooler_output.grad_fn is not None  # detach=False keeps the graph


# --------------------------------------------------------------------------- defect 15: FeaturePredict


class TextFeatures(FeaturePredict, HFTextClassifier):
    feature_layers = ("model.bert.pooler",)


def test_feature_predict_names_its_own_hook_and_takes_dict_inputs():
    loader = torch.utils.data.DataLoader(TokenDataset(4), batch_size=2)

    class NoHook(TextFeatures):
        pass

    with pytest.raises(TypeError, match="feature_input") as err:
        NoHook().predict_step({"input_ids": torch.ones(2, 3, dtype=torch.long)}, 0)
    assert "tta_input" not in str(err.value)

    class WithHook(TextFeatures):
        def feature_input(self, batch):
            return {k: v for k, v in batch.items() if k != "labels"}

    out = cpu_trainer().predict(WithHook(), loader)
    assert [o["model.bert.pooler"].shape for o in out] == [(2, 16), (2, 16)]
