"""The settings table of the conformance suite.

Every public Callback, LightningModule mixin, plugin and datamodule exported in
``lightning_tricks.__all__`` needs an entry in ``SETTINGS`` (one file per area, merged
here; one file per team); an export without one fails the suite. Every other exported class must be
listed in ``NOT_COMPONENTS`` with the reason it is not a component.
"""

from __future__ import annotations

from tests.conformance.settings import (
    camviz,
    finetune,
    inference,
    inspect,
    optim,
    perfmem,
    perfspeed,
    repro,
    safe_checkpoint,
    weights,
)
from tests.conformance.spec import Spec

_AREAS = (finetune, weights, repro, optim, inference, inspect, perfmem, perfspeed, camviz, safe_checkpoint)

SETTINGS: dict[str, list[Spec]] = {}
NOT_COMPONENTS: dict[str, str] = {"LightningMixin": "abstract marker base class of all mixins"}
# Valid constructor arguments for exported classes that are not YAML-constructible
# components (e.g. they take a model): name -> zero-argument callable returning kwargs.
# Used as the starting point of tests/test_bad_input.py.
CONSTRUCT_ARGS: dict = {}

for _area in _AREAS:
    for _name, _specs in _area.SETTINGS.items():
        if _name in SETTINGS:
            raise ValueError(f"{_name} has settings in two areas")
        SETTINGS[_name] = list(_specs) if isinstance(_specs, list | tuple) else [_specs]
    NOT_COMPONENTS.update(getattr(_area, "NOT_COMPONENTS", {}))
    CONSTRUCT_ARGS.update(getattr(_area, "CONSTRUCT_ARGS", {}))


def spec_ids() -> list[tuple[str, Spec, str]]:
    """(export name, spec, test id) for every configuration."""
    out = []
    for name, specs in sorted(SETTINGS.items()):
        for spec in specs:
            out.append((name, spec, f"{name}[{spec.id}]" if spec.id else name))
    return out
