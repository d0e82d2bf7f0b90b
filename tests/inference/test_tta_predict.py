"""TTA: views, inversion, merge modes, batching, modes restored (functional), and the TTAPredict mixin
through a real Trainer."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from lightning_tricks import TTAPredict
from lightning_tricks.functional import merge_outputs, parse_view, parse_views, tta_predict
from tests.helpers import ClassifierModule, ImageDataModule, SmallCNN, cpu_trainer

GEOMETRIC = ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "hflip+rot90", "vflip+rot270"]


@pytest.mark.parametrize("spec", GEOMETRIC)
def test_dense_views_invert_exactly(spec):
    x = torch.randn(2, 3, 6, 6)
    v = parse_view(spec)
    assert torch.equal(v.invert(v.apply(x), x.shape[-2:]), x)


def test_views_do_what_their_names_say():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    assert parse_view("hflip").apply(x).flatten().tolist() == [1, 0, 3, 2]
    assert parse_view("vflip").apply(x).flatten().tolist() == [2, 3, 0, 1]
    assert parse_view("rot90").apply(x).flatten().tolist() == [1, 3, 0, 2]  # counter-clockwise
    assert parse_view("scale:0.5").apply(torch.randn(1, 1, 8, 8)).shape[-2:] == (4, 4)
    crops = parse_view("five_crop:1").apply(torch.arange(9.0).reshape(1, 1, 3, 3))
    assert crops.flatten().tolist() == [0, 2, 6, 8, 4]  # corners then centre
    ten = parse_view("ten_crop:2x1").apply(torch.arange(9.0).reshape(1, 1, 3, 3))
    assert ten.shape == (10, 1, 2, 1)
    grid = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert parse_view("hshift:1").apply(grid).flatten().tolist() == [0, 1, 2, 0, 4, 5, 0, 7, 8]  # right
    assert parse_view("hshift:-2").apply(grid).flatten().tolist() == [3, 0, 0, 6, 0, 0, 9, 0, 0]  # left
    assert parse_view("vshift:1").apply(grid).flatten().tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6]  # down
    assert parse_view("vshift:-1+hshift:1").apply(grid).flatten().tolist() == [0, 4, 5, 0, 7, 8, 0, 0, 0]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("hflp", "unknown view 'hflp'"),
        ("scale:-1", "factor > 0"),
        ("five_crop", "needs a crop size"),
        ("rot90:2", "no argument"),
        ("hshift:0", "non-zero whole number of pixels"),
        ("vshift:1.5", r"positive: down, negative: up\); got '1.5'"),
    ],
)
def test_bad_view_strings_are_explained(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_view(bad)
    with pytest.raises(ValueError, match="repeats hflip"):
        parse_views(["hflip", "hflip"])


@pytest.mark.parametrize(
    "merge", ["mean", "mean_softmax", "mean_sigmoid", "gmean_softmax", "gmean_sigmoid", "max", "vote"]
)
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_batched_equals_one_forward_per_view(merge, chunk_size):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(5, 3, 8, 8)
    views = ["hflip", "rot90", "vflip+rot180"]
    out, per_view = tta_predict(model, x, views, merge, chunk_size, return_views=True)
    with torch.no_grad():
        ref_views = torch.stack([model(v.apply(x)) for v in parse_views(["identity", *views])])
    torch.testing.assert_close(per_view, ref_views, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, merge_outputs(ref_views, merge), rtol=1e-4, atol=1e-5)


def test_merge_definitions():
    logits = torch.randn(3, 4, 5)
    p = logits.softmax(-1)
    torch.testing.assert_close(merge_outputs(logits, "gmean_softmax"), p.log().mean(0).exp())
    torch.testing.assert_close(merge_outputs(logits, "mean_softmax"), p.mean(0))
    torch.testing.assert_close(merge_outputs(logits, "max"), logits.amax(0))
    votes = merge_outputs(logits, "vote")
    assert torch.equal(votes.sum(-1), torch.full((4,), 3.0))
    manual = torch.zeros(4, 5)
    for v in range(3):
        manual[torch.arange(4), logits[v].argmax(-1)] += 1
    assert torch.equal(votes, manual)


def test_identity_included_unless_removed():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    _, with_id = tta_predict(model, x, ["hflip"], return_views=True)
    _, without = tta_predict(model, x, ["hflip"], include_identity=False, return_views=True)
    assert with_id.shape[0] == 2 and without.shape[0] == 1
    torch.testing.assert_close(with_id[0], model(x).detach())


def test_dense_outputs_are_inverted_before_merging():
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 6)  # non-square: rot90 changes the shape, a second forward group
    _, per_view = tta_predict(seg, x, ["hflip", "rot90", "vflip+rot270"], return_views=True)
    assert per_view.shape == (4, 2, 2, 8, 6)
    # an equivariant-free conv net differs per view, but inverting the pure-1x1 part is exact:
    pointwise = nn.Conv2d(3, 2, 1)
    out = tta_predict(pointwise, x, ["hflip", "rot90", "vflip+rot270"], "max")
    torch.testing.assert_close(out, pointwise(x).detach(), rtol=1e-5, atol=1e-5)


def test_rescale_is_inverted_by_resizing_back():
    # the inverse of a rescale resizes the dense output back (bilinear): exact on constant maps,
    # and composed rescales come back to the input size through the intermediate sizes
    pointwise = nn.Conv2d(3, 2, 1)
    x = torch.ones(2, 3, 8, 6)
    _, per_view = tta_predict(pointwise, x, ["scale:0.5", "scale:1.5+rot90"], return_views=True)
    assert per_view.shape == (3, 2, 2, 8, 6)
    ref = pointwise(x).detach()
    for v in per_view:
        torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("view", ["five_crop:6", "hshift:1"])
def test_crops_and_shifts_on_dense_outputs_raise_clearly(view):
    with pytest.raises(ValueError, match="not invertible"):
        tta_predict(nn.Conv2d(3, 2, 1), torch.randn(1, 3, 8, 8), [view])


def test_shift_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match="a shift of 3 pixels leaves nothing of a size-3 side"):
        tta_predict(nn.Flatten(), torch.randn(1, 1, 3, 3), ["vshift:-3"])


def test_crops_for_classification_and_precropped_input():
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    _out, per_view = tta_predict(model, x, ["ten_crop:6"], "mean", return_views=True)
    assert per_view.shape == (11, 3, 4)
    with torch.no_grad():
        crops = parse_view("ten_crop:6").apply(x).reshape(10, 3, 3, 6, 6)
        torch.testing.assert_close(per_view[1:], torch.stack([model(c) for c in crops]), rtol=1e-4, atol=1e-5)
        # the cheat sheet's pre-cropped (B, n_crops, C, H, W) input: mean over crops (and views)
        pre = crops.transpose(0, 1)  # (B, 10, C, h, w)
        ref = model(pre.reshape(-1, 3, 6, 6)).reshape(3, 10, 4).mean(1)
    torch.testing.assert_close(tta_predict(model, pre, ["identity"]), ref, rtol=1e-4, atol=1e-5)
    _, pv = tta_predict(model, pre, ["hflip"], return_views=True)
    assert pv.shape == (20, 3, 4)


def test_runs_in_eval_inference_mode_and_restores_modes():
    model = SmallCNN()
    model.train()
    model.backbone[0].eval()  # a mixed state must come back as it was
    before = {n: m.training for n, m in model.named_modules()}
    seen = {}

    def hook(mod, args, out):
        seen["training"] = mod.training
        seen["inference"] = torch.is_inference_mode_enabled()

    h = model.backbone[1].register_forward_hook(hook)
    running_mean = model.backbone[0][1].running_mean.clone()
    tta_predict(model, torch.randn(4, 3, 8, 8), ["hflip"])
    h.remove()
    assert seen == {"training": False, "inference": True}
    assert {n: m.training for n, m in model.named_modules()} == before
    assert torch.equal(model.backbone[0][1].running_mean, running_mean)


def test_bad_arguments_name_themselves():
    model = SmallCNN()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="merge"):
        tta_predict(model, x, ["hflip"], "median")
    with pytest.raises(ValueError, match="chunk_size"):
        tta_predict(model, x, ["hflip"], chunk_size=0)
    with pytest.raises(ValueError, match="`x`"):
        tta_predict(model, torch.randn(3, 8, 8), ["hflip"])
    with pytest.raises(TypeError, match="cannot pick a tensor from a model output of type str"):
        tta_predict(lambda t: [model, "text"][1], x, ["hflip"])
    with pytest.raises(TypeError, match="element 0 of the model's tuple is a str, not a tensor"):
        tta_predict(lambda t: ("text", model(t)), x, ["hflip"])


# ----------------------------------------------------------------- TTAPredict (Lightning layer)


class TTAModel(TTAPredict, ClassifierModule):
    tta_views = ("hflip", "vflip")
    tta_merge = "mean_softmax"


class TTATestModel(TTAPredict, ClassifierModule):
    tta_views = ("hflip",)
    tta_on_test = True


def _val_x():
    dm = ImageDataModule(n_val=20)
    dm.setup()
    return dm.val_set.tensors[0]


def test_predict_uses_tta_and_restores_forward():
    torch.manual_seed(0)
    model = TTAModel()
    trainer = cpu_trainer(max_epochs=1)
    trainer.fit(model, datamodule=ImageDataModule())
    preds = torch.cat(trainer.predict(model, datamodule=ImageDataModule(n_val=20, batch_size=8)))
    x = _val_x()
    model.eval()
    expected = tta_predict(model, x, ["identity", "hflip", "vflip"], "mean_softmax")
    torch.testing.assert_close(preds, expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in model.__dict__  # plain forward outside predict
    with torch.no_grad():
        assert not torch.allclose(model(x), expected)


def test_user_predict_step_gets_tta_too():
    class Own(TTAModel):
        def predict_step(self, batch, batch_idx):
            return self(batch[0]).log()

    model = Own()
    preds = torch.cat(cpu_trainer().predict(model, datamodule=ImageDataModule(n_val=20, batch_size=8)))
    expected = tta_predict(model, _val_x(), ["hflip", "vflip"], "mean_softmax")
    torch.testing.assert_close(preds, expected.log(), rtol=1e-5, atol=1e-6)


def test_tta_on_test_changes_test_metrics_only_when_enabled():
    torch.manual_seed(0)
    model = TTATestModel()
    dm = ImageDataModule(n_val=20)
    res = cpu_trainer().test(model, datamodule=dm, verbose=False)[0]
    x = _val_x()
    y = dm.val_set.tensors[1]
    tta = tta_predict(model, x, ["hflip"])
    assert res["test_acc"] == pytest.approx((tta.argmax(1) == y).float().mean().item(), abs=1e-6)
    TTATestModel.tta_on_test = False
    try:
        res2 = cpu_trainer().test(model, datamodule=dm, verbose=False)[0]
        with torch.no_grad():
            plain = model.eval()(x)
        assert res2["test_acc"] == pytest.approx((plain.argmax(1) == y).float().mean().item(), abs=1e-6)
    finally:
        TTATestModel.tta_on_test = True


def test_bad_class_attribute_is_named():
    class Bad(TTAPredict, ClassifierModule):
        tta_merge = "median"

    with pytest.raises(ValueError, match="tta_merge"):
        cpu_trainer().predict(Bad(), datamodule=ImageDataModule(n_val=8))


class FailingPredict(TTAModel):
    fail = True

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        out = super().predict_step(batch, batch_idx, dataloader_idx)
        if self.fail:
            raise RuntimeError("boom in predict_step")
        return out


def test_failed_predict_leaves_no_tta_behind():
    torch.manual_seed(0)
    model = FailingPredict()
    trainer = cpu_trainer(max_epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.predict(model, datamodule=ImageDataModule(n_val=16, batch_size=8))
    assert "forward" not in model.__dict__  # nothing outlives the call that failed
    x = _val_x()
    model.eval()
    with torch.no_grad():
        plain = model.head(model.backbone(x))  # the plain forward, by hand
        out = model(x)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)  # calls are plain again
    pickle.dumps(model)  # nothing unpicklable left on the module
    # validation runs without TTA: its accuracy is the plain one
    dm = ImageDataModule(n_val=20)
    res = cpu_trainer().validate(model, datamodule=dm, verbose=False)[0]
    dm.setup()
    y = dm.val_set.tensors[1]
    assert res["val_acc"] == pytest.approx((out.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert "forward" not in model.__dict__
    model.train()
    cpu_trainer(max_epochs=1).fit(model, datamodule=ImageDataModule())  # and training works
    model.fail = False
    preds = torch.cat(cpu_trainer().predict(model, datamodule=ImageDataModule(n_val=20, batch_size=8)))
    model.eval()
    torch.testing.assert_close(preds, tta_predict(model, x, ["identity", "hflip", "vflip"], "mean_softmax"))


def test_tta_forward_during_predict_applies_tta_once():
    class Own(TTAModel):
        def predict_step(self, batch, batch_idx):
            return self.tta_forward(batch[0])

    torch.manual_seed(0)
    model = Own()
    preds = torch.cat(cpu_trainer().predict(model, datamodule=ImageDataModule(n_val=20, batch_size=8)))
    expected = tta_predict(model.eval(), _val_x(), ["hflip", "vflip"], "mean_softmax")
    torch.testing.assert_close(preds, expected, rtol=1e-5, atol=1e-6)
