"""One naming rule for submodules across every trick that takes module names."""

from __future__ import annotations

import pytest

from lightning_tricks.functional import IntermediateGrads, extract_features, select_layers
from lightning_tricks.functional._modules import glob_match, match_modules, unknown_module_error
from lightning_tricks.functional.finetune.freeze import select_modules
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
        (lambda: IntermediateGrads(net, ["backbone.blokcs"]), "intermediate"),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == expected.replace("`layers`", f"`{arg}`")
