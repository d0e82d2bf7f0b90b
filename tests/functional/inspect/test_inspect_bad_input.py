"""Bad input to the functional `inspect` cores: a clear error naming the argument, or a right answer.

Each test pins one defect of issue 18: names read character by character, layers that never
ran, length mismatches, integer images, overflowing histogram ranges, empty activations,
and errors from deep inside torch for `model=None`, non-tensors and wrong-typed arguments.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_tricks._logging import _to_uint8_image as to_uint8_image
from lightning_tricks.functional import (
    IntermediateGrads,
    NonFiniteTracker,
    RetainedGraph,
    activation_histogram,
    activation_stats,
    capture_activations,
    dataset_storages,
    feature_map_grid,
    find_aliased_tensors,
    find_retained_graphs,
    first_nonfinite,
    grad_cam,
    histogram_image,
    layer_grad_norms,
    select_layers,
    visualize_filters,
)


def _chain(n: int = 13) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(n)])


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


class Skips(nn.Module):
    """`unused` is a submodule the forward never calls; `none` returns no tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)
        self.none = nn.Identity()

    def forward(self, x):
        self.none(None)
        return self.used(x)


def test_a_lone_string_is_one_layer_name_not_its_characters():
    net = _chain()
    x = torch.randn(1, 2)
    assert list(capture_activations(net, x, "12")) == ["12"]
    assert select_layers(net, "12") == ["12"]
    assert IntermediateGrads(net, "12").names == ["12"]
    with pytest.raises(ValueError, match=r"`layers` names no submodule '13'"):
        capture_activations(net, x, "13")


def test_capture_refuses_layers_the_forward_never_reaches_and_leaves_the_model_as_it_was():
    model = Skips().train()
    with pytest.raises(ValueError, match=r"`layers`.*\['unused'\] did not run"):
        capture_activations(model, torch.randn(3, 2), ["used", "unused"])
    with pytest.raises(ValueError, match=r"`layers`.*'none' returned NoneType"):
        capture_activations(model, torch.randn(3, 2), "none")
    assert model.training and not model.used._forward_hooks and not model.unused._forward_hooks
    assert capture_activations(model, torch.randn(3, 2), "used")["used"].shape == (3, 2)


def test_what_the_model_refuses_is_named_with_its_input_and_nothing_is_left_behind():
    model = _cnn().train()
    with pytest.raises(
        ValueError, match=r"running `model` on `inputs` \(a tensor of shape \(2, 5\).*raised RuntimeError"
    ) as err:
        capture_activations(model, torch.randn(2, 5), "0")
    assert isinstance(err.value.__cause__, RuntimeError)
    assert model.training and not model[0]._forward_hooks
    with pytest.raises(ValueError, match=r"running `model` on `x` .*raised RuntimeError"):
        grad_cam(model, torch.randn(1, 2, 4, 4), "0")  # two channels for a 3-channel model
    with pytest.raises(ValueError, match=r"`in_channels`=2\) raised RuntimeError"):
        visualize_filters(model, "0", 0, in_channels=2, size=4, steps=1, rounds=1)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_capture_names_inputs_without_a_tensor_before_hooking_anything():
    model = Skips()
    with pytest.raises(TypeError, match=r"`inputs` must be a tensor.*'x' of type str"):
        capture_activations(model, "x", "used")
    with pytest.raises(TypeError, match="`forward_fn` must be a callable"):
        capture_activations(model, torch.randn(1, 2), "used", forward_fn=3)
    with pytest.raises(TypeError, match="`forward_context` must return a context manager"):
        capture_activations(model, torch.randn(1, 2), "used", forward_context=lambda: None)
    assert not model.used._forward_hooks


def test_first_nonfinite_refuses_a_length_mismatch_instead_of_cutting_it_short():
    with pytest.raises(ValueError, match=r"`names` and `values` must have the same length; got 1 and 2"):
        first_nonfinite(["a"], [1.0, math.nan])
    with pytest.raises(TypeError, match=r"`values\[1\]` must be a number"):
        first_nonfinite(["a", "b"], [1.0, "nan"])
    with pytest.raises(TypeError, match="`names` must be a sequence of names"):
        first_nonfinite("ab", [1.0, math.nan])
    assert first_nonfinite(["a", "b"], [1.0, math.inf]) == "b"


def test_integer_images_hold_pixel_values_not_fractions():
    img = torch.tensor([[0, 128], [200, 255]])
    assert to_uint8_image(img).tolist() == [[0, 128], [200, 255]]
    assert to_uint8_image(torch.tensor([[True, False]])).tolist() == [[255, 0]]
    assert to_uint8_image(torch.tensor([[0.0, 1.0]])).tolist() == [[0, 255]]  # floats: [0, 1]
    with pytest.raises(
        ValueError, match=r"`image` of dtype torch.int64 must hold pixel values in 0..255.*\[-1, 300\]"
    ):
        to_uint8_image(torch.tensor([[-1, 300]]))


def test_histogram_ranges_wider_than_float32_bins_still_count():
    values = torch.tensor([-3e38, -1e38, 1e38, 3e38, 0.0])
    counts = activation_histogram(values, 4, -3e38, 3e38)
    assert counts.tolist() == [1.0, 1.0, 2.0, 1.0]  # 0.0 sits on the middle edge (upper bin)
    assert activation_histogram(values, 1000, -3.4e38, 3.4e38).sum().item() == 5
    with pytest.raises(ValueError, match="`low` must be a number >="):
        activation_histogram(values, 4, -1e39, 0.0)
    with pytest.raises(ValueError, match="`high` must be a finite number"):
        activation_histogram(values, 4, 0.0, math.inf)


@pytest.mark.parametrize(
    "call",
    [
        lambda a: activation_stats(a),
        lambda a: activation_histogram(a, 4, 0.0, 1.0),
        lambda a: feature_map_grid(a),
    ],
    ids=["activation_stats", "activation_histogram", "feature_map_grid"],
)
def test_empty_and_non_tensor_activations_are_refused(call):
    for empty in (torch.zeros(0, 3), torch.zeros(2, 0), torch.zeros(0, 3, 4, 4)):
        with pytest.raises(ValueError, match=r"`activation` must be a non-empty tensor"):
            call(empty)
    with pytest.raises(TypeError, match=r"`activation` must be a torch.Tensor; got \[1.0\]"):
        call([1.0])
    with pytest.raises(TypeError, match="`activation` must be a real"):
        call(torch.ones(2, 2, dtype=torch.complex64))


def test_activation_image_and_stats_arguments_are_checked():
    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"`feature_dim` must index a dimension.*\(2, 3, 4, 4\); got 4"):
        feature_map_grid(a, feature_dim=4)
    with pytest.raises(ValueError, match="`padding` must be an int >= 0"):
        feature_map_grid(a, padding=-1)
    with pytest.raises(ValueError, match="`padding` must be an int <= 64"):
        feature_map_grid(a, padding=10**6)
    with pytest.raises(ValueError, match=r"`bins` must be an int <= 1048576"):
        activation_histogram(a, 2**64, 0.0, 1.0)
    with pytest.raises(TypeError, match="`feature_dim` must be an int"):
        activation_stats(a, feature_dim=1.5)
    with pytest.raises(ValueError, match=r"`history` must hold finite counts >= 0"):
        histogram_image(torch.tensor([[1.0, -2.0]]))
    with pytest.raises(ValueError, match=r"`history` must hold finite counts >= 0"):
        histogram_image([[1.0, math.nan]])
    with pytest.raises(TypeError, match="`history` must be a"):
        histogram_image("counts")
    assert histogram_image(torch.tensor([[1, 0], [0, 5]])).shape == (3, 2, 2)  # integer counts


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: select_layers(None), "model"),
        (lambda: capture_activations(None, torch.ones(1, 2), "0"), "model"),
        (lambda: IntermediateGrads(None, "0"), "model"),
        (lambda: NonFiniteTracker(None), "model"),
        (lambda: layer_grad_norms(None), "model"),
        (lambda: grad_cam(None, torch.ones(1, 3, 4, 4), "0"), "model"),
        (lambda: visualize_filters(None, "0", 0), "model"),
        (lambda: find_retained_graphs(None), "module"),
        (lambda: dataset_storages(None), "dataset"),
    ],
    ids=[
        "select_layers",
        "capture_activations",
        "IntermediateGrads",
        "NonFiniteTracker",
        "layer_grad_norms",
        "grad_cam",
        "visualize_filters",
        "find_retained_graphs",
        "dataset_storages",
    ],
)
def test_none_for_a_model_is_named(call, arg):
    with pytest.raises(TypeError, match=rf"`{arg}` must be"):
        call()


def test_gradient_monitor_cores_check_types_without_reading_values():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match=r"`norm_type` must be a number in \[1, 32\] or inf; got 0"):
        layer_grad_norms(net, 0)
    with pytest.raises(TypeError, match="`norm_type` must be a number"):
        layer_grad_norms(net, "2")
    assert layer_grad_norms(net, math.inf)[1].shape == (2,)
    tracker = NonFiniteTracker(net)
    with pytest.raises(TypeError, match="`step` must be an int"):
        tracker.update("3")
    tracker.update(0)
    with pytest.raises(ValueError, match=r"`values` must hold 6 numbers.*got 2"):
        tracker.read([0.0, 1.0])
    with pytest.raises(TypeError, match=r"`values\[2\]` must be a number"):
        tracker.read([0.0, 1.0, "x", 0.0, 0.0, 0.0])
    assert tracker.read(torch.cat(tracker.pending()).tolist()) is None


def test_grad_cam_refuses_integer_images_and_bad_targets_before_running_the_model():
    model = _cnn()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor"):
        grad_cam(model, torch.ones(1, 3, 4, 4, dtype=torch.long), "0")
    with pytest.raises(ValueError, match="`x` must be a non-empty tensor"):
        grad_cam(model, torch.ones(0, 3, 4, 4), "0")
    with pytest.raises(TypeError, match="`targets` must be a class index"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", targets=torch.tensor([0.5, 1.0]))
    with pytest.raises(TypeError, match="`targets` must be a class index"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", targets="1")
    with pytest.raises(ValueError, match=r"one per image \(2\); got 3"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", targets=[0, 1, 1])
    with pytest.raises(ValueError, match=r"`targets` must be class indices >= 0; got \[0, -1\]"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", targets=[0, -1])
    with pytest.raises(TypeError, match="`output` must be a callable"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", output="logits")
    assert calls == []
    with pytest.raises(ValueError, match=r"the `output` callable on the model's Tensor raised RuntimeError"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", output=nn.Conv2d(3, 1, 1))  # takes no (B, 2) logits
    with pytest.raises(TypeError, match="`output` must be a callable"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", output=nn.Linear)
    with pytest.raises(TypeError, match="`output` must return the logits tensor"):
        grad_cam(model, torch.ones(2, 3, 4, 4), "0", output=lambda out: out.tolist())


def test_visualize_filters_checks_numbers_it_would_feed_the_optimiser():
    model = _cnn()
    kw = {"size": 4, "steps": 1, "rounds": 1}
    with pytest.raises(ValueError, match="`mean` must be a finite number; got nan"):
        visualize_filters(model, "0", 0, mean=[math.nan], **kw)
    with pytest.raises(TypeError, match="`std` must be a number; got True"):
        visualize_filters(model, "0", 0, std=[True], **kw)
    with pytest.raises(TypeError, match="`mean` must be a sequence"):
        visualize_filters(model, "0", 0, mean=0.5, **kw)
    with pytest.raises(ValueError, match="`lr` must be a number > 0"):
        visualize_filters(model, "0", 0, lr=0.0, **kw)
    with pytest.raises(ValueError, match="`channels` must be a channel index or a non-empty sequence"):
        visualize_filters(model, "0", [], **kw)
    # sizes that would hang or exhaust memory are refused before anything runs
    with pytest.raises(ValueError, match="`steps` must be an int <= 100000"):
        visualize_filters(model, "0", 0, size=4, steps=2**64)
    with pytest.raises(ValueError, match="`size` must be an int <= 4096"):
        visualize_filters(model, "0", 0, size=10**6)
    with pytest.raises(ValueError, match=r"the images would hold 64 x 3 x 2048 x 2048 values"):
        visualize_filters(model, "0", list(range(64)), size=2048)
    with pytest.raises(ValueError, match="`seed` must be an int <= "):
        visualize_filters(model, "0", 0, seed=2**64, **kw)


def test_guards_check_their_arguments():
    ds = TensorDataset(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="`storages` must map storage pointers"):
        find_aliased_tensors(ds.tensors[0], None)
    with pytest.raises(ValueError, match="`max_depth` must be an int >= 0"):
        dataset_storages(ds, max_depth=-1)
    net = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="`max_items` must be an int >= 1"):
        find_retained_graphs(net, max_items=0)
    with pytest.raises(TypeError, match="`prefix` must be a string"):
        find_retained_graphs(net, prefix=None)
    with pytest.raises(ValueError, match="`num_nodes` must be an int >= 0"):
        RetainedGraph("self.x", 1, -1, 0)
    with pytest.raises(TypeError, match="`path` must be a string"):
        RetainedGraph(3, 1, 1, 0)
