"""One naming rule for submodules across every trick that takes module names."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_tricks.functional import IntermediateGrads, extract_features, select_layers
from lightning_tricks.functional._modules import glob_match, match_modules, unknown_module_error
from lightning_tricks.functional.finetune.freeze_backbone import select_modules
from lightning_tricks.functional.perf._targets import select_modules as select_targets
from tests.helpers import BlockNet


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("backbone.blocks", "backbone.*", True),
        ("backbone.blocks.0", "backbone.*", False),  # * stays within one segment
        ("backbone.blocks.0", "backbone.**", True),  # ** spans segments
        ("backbone.blocks.1.norm1", "**.norm1", True),
        ("backbone.blocks.1.norm1", "backbone.blocks.?.norm[12]", True),
        ("head", "backbone.**", False),
    ],
)
def test_glob_rule(name, pattern, expected):
    assert glob_match(name, pattern) is expected


def test_every_entry_point_selects_the_same_modules_for_a_pattern():
    net = BlockNet(depth=3)
    expected = ["backbone.blocks.0", "backbone.blocks.1", "backbone.blocks.2"]
    assert match_modules(net, "backbone.blocks.*") == expected
    assert list(select_modules(net, "backbone.blocks.*")) == expected  # FreezeBackbone
    assert select_layers(net, ["backbone.blocks.*"], max_layers=10) == expected  # ActivationVisualizer
    assert [n for n, _ in select_targets(net, "backbone.blocks.*")] == expected  # checkpointing, Compile


def test_every_entry_point_reports_an_unknown_name_the_same_way():
    net = BlockNet()
    expected = str(unknown_module_error("layers", "backbone.blokcs", net))
    assert "did you mean 'backbone.blocks'," in expected
    assert "available: backbone, backbone.embed, backbone.blocks, head" in expected
    for call, arg in (
        (lambda: select_modules(net, "backbone.blokcs", arg="layers"), "layers"),
        (lambda: select_layers(net, ["backbone.blokcs"]), "layers"),
        (lambda: extract_features(net, __import__("torch").zeros(1, 3, 8, 8), ["backbone.blokcs"]), "layers"),
        (lambda: IntermediateGrads(net, ["backbone.blokcs"]), "names"),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == expected.replace("`layers`", f"`{arg}`")


# ----------------------------------------------------------------- the one resolver


def _numbered_net() -> nn.Module:
    net = nn.Module()
    for name in ("1", "2", "12"):
        net.add_module(name, nn.Linear(2, 2))
    net.add_module("norm", nn.LayerNorm(2))
    return net


def test_a_lone_string_is_one_name_never_its_characters():
    from lightning_tricks.functional._modules import resolve_modules, resolve_parameters

    net = _numbered_net()
    assert list(resolve_modules(net, "12", "layers")) == ["12"]
    assert list(resolve_parameters(net, "12", "exclude")) == ["12.weight", "12.bias"]


def test_class_names_and_classes_select_by_type_outermost_drops_nested():
    from lightning_tricks.functional._modules import resolve_modules

    net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
    assert list(resolve_modules(net, "Linear", "targets")) == ["0.0", "1"]
    assert list(resolve_modules(net, [nn.ReLU], "targets")) == ["0.1"]
    assert list(resolve_modules(net, ["0", "Linear"], "targets", outermost=True)) == ["0", "1"]
    assert list(resolve_modules(net, ["0", "Linear"], "targets")) == ["0", "0.0", "1"]


def test_parameter_names_follow_the_module_segment_rule():
    from lightning_tricks.functional._modules import resolve_parameters

    net = nn.Sequential()
    net.add_module("backbone", nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))))
    net.add_module("head", nn.Linear(2, 1))
    # `*` stays within one segment: direct children of backbone and their parameters
    assert sorted(resolve_parameters(net, "backbone.*", "p")) == [
        "backbone.0.bias",
        "backbone.0.weight",
        "backbone.1.0.bias",
        "backbone.1.0.weight",
    ]
    assert list(resolve_parameters(net, "*.bias", "p")) == ["head.bias"]
    assert list(resolve_parameters(net, "**.bias", "p")) == [
        "backbone.0.bias",
        "backbone.1.0.bias",
        "head.bias",
    ]
    assert list(resolve_parameters(net, "head", "p")) == ["head.weight", "head.bias"]


def test_tied_parameters_appear_once():
    from lightning_tricks.functional._modules import resolve_parameters

    net = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    net[1].weight = net[0].weight
    assert list(resolve_parameters(net, "**.weight", "p")) == ["0.weight"]


@pytest.mark.parametrize("bad", [3, None, [""], ["a", 2]])
def test_bad_specs_are_type_errors_naming_the_argument(bad):
    from lightning_tricks.functional._modules import resolve_modules

    with pytest.raises(TypeError, match="`layers`"):
        resolve_modules(nn.Linear(2, 2), bad, "layers")


def test_unknown_entries_share_one_message_form():
    from lightning_tricks.functional._modules import resolve_modules, resolve_parameters

    net = _numbered_net()
    with pytest.raises(
        ValueError, match=r"`layers` names no submodule 'nrom'; available: .*did you mean 'norm'"
    ):
        resolve_modules(net, "nrom", "layers")
    with pytest.raises(ValueError, match=r"`layers` names no submodule 'Conv2d'"):
        resolve_modules(net, nn.Conv2d, "layers")
    with pytest.raises(
        ValueError, match=r"`exclude` names no parameter or submodule 'norm.bais'.*'norm.bias'"
    ):
        resolve_parameters(net, "norm.bais", "exclude")


def test_naming_the_models_own_class_says_so_instead_of_suggesting_it():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    error = str(unknown_module_error("targets", "Block", Block()))
    assert "did you mean 'Block'" not in error
    assert "'Block' is the class of the model itself, and `targets` selects its submodules" in error
