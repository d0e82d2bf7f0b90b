"""Bad input to the functional `inference` cores: a clear error naming the argument, nothing
written or deleted before a refusal, or a right answer.

Each test pins one defect of issue 18: dense inversion of outputs that are not maps, views
without `apply`, a lone view string read character by character, corrupt prediction files,
and errors from deep inside torch for `model=None`, integer or empty images and non-tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tricks.functional import (
    FeatureExtractor,
    View,
    clear_tta_plans,
    extract_features,
    load_predictions,
    merge_outputs,
    merge_rank_predictions,
    parse_views,
    save_rank_predictions,
    tta_evaluation,
    tta_flips,
    tta_plans,
    tta_predict,
)
from tests.helpers import SmallCNN


class TokenScores(nn.Module):
    """Per-row class scores (N, T, K) from images (N, C, H, W): the last axis is classes, not width."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 5)

    def forward(self, x):
        return self.proj(x.mean(1))  # (N, H, W=8) -> (N, H, 5)


def test_dense_true_refuses_outputs_whose_last_axes_are_not_a_map_of_the_image():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"`dense`=True.*view 'identity' has shape \(2, 8, 5\).*\(8, 8\)"):
        tta_predict(TokenScores(), x, ["hflip"], dense=True)
    # auto-detection merges such outputs as they are: the class axis is not flipped
    model = TokenScores()
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(tta_predict(model, x, ["hflip"]), expected)


def test_dense_true_inverts_maps_cropped_by_unpadded_convolutions():
    torch.manual_seed(0)
    # 8x8 -> 6x6: a map of the image, one pixel short on every side; symmetric, so flips commute
    valid = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AvgPool2d(3, stride=1))
    x = torch.randn(2, 3, 8, 8)
    merged = tta_predict(valid, x, ["hflip", "vflip", "rot90"], dense=True)
    torch.testing.assert_close(merged, valid(x).detach(), rtol=1e-5, atol=1e-5)


class NoApply(View):
    pass


def test_a_view_subclass_without_apply_is_named_before_the_model_runs():
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 2, 1))
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(
        TypeError, match=r"`views\[1\]` View\('mine'\).*NoApply does not implement `apply\(x\)`"
    ):
        tta_predict(model, torch.randn(1, 3, 4, 4), ["hflip", NoApply("mine")])
    assert calls == []
    with pytest.raises(
        NotImplementedError, match=r"view 'mine' of type NoApply does not implement `apply\(x\)`"
    ):
        NoApply("mine").apply(torch.zeros(1, 1, 2, 2))
    with pytest.raises(TypeError, match=r"`name` must be a string"):
        View(5)


def test_tta_predict_names_the_model_and_images_it_cannot_use():
    model = SmallCNN()
    with pytest.raises(
        TypeError, match=r"`model` must be a torch.nn.Module or a callable \(not a class\); got None"
    ):
        tta_predict(None, torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"`x` must be a floating-point tensor.*torch.uint8"):
        tta_predict(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(
        ValueError, match=r"`x` must be a non-empty tensor; got a tensor of shape \(0, 3, 8, 8\)"
    ):
        tta_predict(model, torch.zeros(0, 3, 8, 8))
    with pytest.raises(
        ValueError, match=r"`x` must be a tensor of shape \(B, C, H, W\).*got \[1.0\] of type list"
    ):
        tta_predict(model, [1.0])
    with pytest.raises(TypeError, match=r"`model` must be .* \(not a class\); got <class"):
        tta_predict(nn.Linear, torch.randn(1, 3, 8, 8))


def test_what_the_model_refuses_is_named_with_its_input_and_chained():
    model = SmallCNN()  # takes 3 channels
    precropped = torch.randn(2, 5, 2, 8, 8)  # (B, n_crops, C=2, H, W)
    with pytest.raises(
        ValueError, match=r"running `model` on views of `x` of shape \(20, 2, 8, 8\) raised RuntimeError"
    ) as err:
        tta_predict(model, precropped, ["hflip"], chunk_size=None)
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(
        ValueError, match=r"running `model` on a tensor of shape \(2, 5\).*raised RuntimeError"
    ):
        extract_features(model, torch.randn(2, 5), ["head"])
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"the `output` callable on the model's Tensor raised RuntimeError"):
        tta_predict(model, x, ["hflip"], chunk_size=None, output=nn.Conv2d(3, 1, 1))  # logits are (N, K)
    with pytest.raises(
        TypeError, match=r"`output` must be None, a key \(str\), an index \(int\) or a callable"
    ):
        tta_predict(model, x, output=nn.Linear)


def test_tta_evaluation_takes_a_lone_view_string_as_one_view():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(4, 3, 8, 8)
    _, tta = tta_evaluation(model, x, "hflip")
    torch.testing.assert_close(tta, tta_predict(model, x, ["hflip"]))
    with pytest.raises(ValueError, match=r"`views` must hold a view besides 'identity'"):
        tta_evaluation(model, x, "identity", include_identity=False)
    with pytest.raises(ValueError, match=r"`merge` must be one of"):
        tta_evaluation(model, x, "hflip", merge="median")


def test_merge_outputs_and_tta_flips_check_their_tensors():
    with pytest.raises(TypeError, match=r"`outputs` must be a torch.Tensor; got \[1.0\]"):
        merge_outputs([1.0])
    with pytest.raises(TypeError, match=r"`outputs` must be a floating-point tensor"):
        merge_outputs(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`outputs` must be stacked per-view outputs \(V, B, ...\)"):
        merge_outputs(torch.ones(3))
    with pytest.raises(ValueError, match=r"`outputs` must be a non-empty tensor"):
        merge_outputs(torch.ones(0, 2, 3))
    scores = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"`target` must be an integer tensor"):
        tta_flips(scores, scores, torch.zeros(4))
    with pytest.raises(TypeError, match=r"`plain` must be a torch.Tensor"):
        tta_flips(scores.tolist(), scores, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class scores"):
        tta_flips(torch.ones(4, 0), torch.ones(4, 0), torch.zeros(4, dtype=torch.long))


def test_plan_helpers_refuse_what_cannot_be_a_model():
    with pytest.raises(TypeError, match=r"`model` must be the torch.nn.Module or callable"):
        clear_tta_plans(5)
    with pytest.raises(TypeError, match=r"`model` must be the torch.nn.Module or callable"):
        tta_plans(None)
    clear_tta_plans(len)  # a callable that was never planned: nothing to forget, no error


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.a(x)


def test_feature_extractor_and_capture_agree_on_layers_that_never_run():
    with pytest.raises(ValueError, match=r"`layers`.*\['b'\] did not run in the forward pass"):
        extract_features(Branch(), torch.randn(1, 2), ["a", "b"])
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module; got None"):
        FeatureExtractor(None, "a")


# ----------------------------------------------------------------------------- prediction files


def _rank_file(path, indices, values):
    save_rank_predictions(path, [(torch.tensor(indices), torch.tensor(values))])
    return path


def test_load_predictions_names_corrupt_files_and_file_descriptors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"`path` '.*bad.pt' is not a predictions file \(torch.load failed"):
        load_predictions(bad)
    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    with pytest.raises(
        ValueError, match=r"expected a dict with 'indices' and 'predictions'; got a dict with keys \['a'\]"
    ):
        load_predictions(other)
    torch.save({"indices": torch.arange(3), "predictions": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"`predictions` must have one row per index \(3\)"):
        load_predictions(other)
    with pytest.raises(TypeError, match=r"`path` must be a path"):
        load_predictions(1)  # file descriptor 1 is stdout: never opened
    with pytest.raises(FileNotFoundError, match=r"`path` names no file"):
        load_predictions(tmp_path / "missing.pt")


def test_merge_reads_every_rank_file_before_writing_or_deleting(tmp_path):
    good = _rank_file(tmp_path / "r0.pt", [0, 2], [0.0, 2.0])
    bad = tmp_path / "r1.pt"
    bad.write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"`rank_paths\[1\]` '.*r1.pt' is not a predictions file"):
        merge_rank_predictions([good, bad], tmp_path / "all.pt")
    assert good.exists() and not (tmp_path / "all.pt").exists()
    save_rank_predictions(bad, [(torch.tensor([1]), torch.zeros(1, 3))])  # another trailing shape
    with pytest.raises(ValueError, match=r"`rank_paths\[1\]` differs in structure from the first rank file"):
        merge_rank_predictions([good, bad], tmp_path / "all.pt")
    assert good.exists() and bad.exists() and not (tmp_path / "all.pt").exists()
    with pytest.raises(ValueError, match=r"`merged_path` must not be one of `rank_paths`"):
        merge_rank_predictions([good], good)
    with pytest.raises(TypeError, match=r"`keep_rank_files` must be a bool"):
        merge_rank_predictions([good], tmp_path / "all.pt", keep_rank_files="no")
    with pytest.raises(ValueError, match=r"`rank_paths\[1\]` names no file: .*gone.pt"):
        merge_rank_predictions([good, tmp_path / "gone.pt"], tmp_path / "all.pt")
    assert good.exists() and not (tmp_path / "all.pt").exists()
    result = merge_rank_predictions(str(good), tmp_path / "all.pt")  # a lone path is one file
    assert result["indices"].tolist() == [0, 2] and not good.exists()


def test_save_rank_predictions_checks_batches_before_writing(tmp_path):
    path = tmp_path / "r0.pt"
    with pytest.raises(TypeError, match=r"`batches` must be a sequence of"):
        save_rank_predictions(path, "abc")
    with pytest.raises(TypeError, match=r"`batches\[0\]\[0\]` must be an integer tensor"):
        save_rank_predictions(path, [(torch.tensor([0.0]), torch.zeros(1))])
    with pytest.raises(ValueError, match=r"`batches\[0\]\[1\]` must have one row per index \(2\)"):
        save_rank_predictions(path, [(torch.tensor([0, 1]), torch.zeros(3))])
    with pytest.raises(
        ValueError, match=r"`batches\[1\]\[1\]` differs in structure from `batches\[0\]\[1\]`"
    ):
        save_rank_predictions(
            path, [(torch.tensor([0]), {"a": torch.zeros(1)}), (torch.tensor([1]), {"b": torch.zeros(1)})]
        )
    with pytest.raises(TypeError, match=r"`path` must be a path"):
        save_rank_predictions(None, [])
    with pytest.raises(ValueError, match=r"`path` must be a non-empty path without NUL characters"):
        save_rank_predictions("a\x00b.pt", [])
    assert not path.exists()
    assert parse_views("hflip")[0].name == "hflip"


def test_the_models_own_exceptions_pass_through_unchanged():
    class ModelBug(RuntimeError):
        pass

    class Broken(nn.Module):
        def forward(self, x):
            raise ModelBug("a bug in the user's model")

    with pytest.raises(ModelBug, match="a bug in the user's model"):
        tta_predict(Broken(), torch.zeros(2, 3, 8, 8), ["hflip"], chunk_size=None)
    with pytest.raises(ValueError, match=r"running `model` on views of `x`.*RuntimeError"):
        tta_predict(nn.Linear(3, 2), torch.zeros(2, 3, 8, 8), ["hflip"], chunk_size=None)  # torch's own
