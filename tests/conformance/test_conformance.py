"""Every exported Callback, mixin, plugin and datamodule against the same contract.

The parametrization comes from ``lightning_tricks.__all__`` and the settings table;
an export that is a component but has no settings entry fails ``test_every_export_has_settings``.
"""

from __future__ import annotations

import pytest

from tests.conformance import checks
from tests.conformance.build import exported_classes, kind_of
from tests.conformance.settings import NOT_COMPONENTS, SETTINGS, spec_ids

SPECS = spec_ids()


def params(check: str) -> list:
    """The specs for one check; a spec's known defect in it is a strict xfail."""
    out = []
    for name, spec, tid in SPECS:
        marks = [pytest.mark.xfail(strict=True, reason=spec.xfail[check])] if check in spec.xfail else []
        out.append(pytest.param(name, spec, id=tid, marks=marks))
    return out


def _skip(spec, check):
    if check in spec.skip:
        pytest.skip(f"{check}: {spec.skip[check]}")


def test_every_export_has_settings():
    exported = exported_classes()
    missing = []
    for name, cls in exported.items():
        if name in NOT_COMPONENTS:
            continue
        if kind_of(cls) is None:
            missing.append(f"{name} (not a Callback/mixin/plugin/datamodule: list it in NOT_COMPONENTS)")
        elif name not in SETTINGS:
            missing.append(f"{name} (a {kind_of(cls)} without a conformance settings entry)")
    assert not missing, "exports without conformance settings: " + "; ".join(missing)
    stale = sorted(set(SETTINGS) - set(exported))
    assert not stale, f"settings for names that are not exported: {stale}"


@pytest.mark.parametrize(("name", "spec"), params("construct"))
def test_construct(name, spec):
    _skip(spec, "construct")
    checks.check_construct(name, spec)


@pytest.mark.parametrize(("name", "spec"), params("pickle"))
def test_pickle_and_deepcopy(name, spec):
    _skip(spec, "pickle")
    checks.check_pickle(name, spec)


@pytest.mark.parametrize(("name", "spec"), params("cli"))
def test_lightning_cli(name, spec, tmp_path):
    _skip(spec, "cli")
    checks.check_cli(name, spec, tmp_path)


@pytest.mark.parametrize(("name", "spec"), params("fit_twice"))
def test_fit_twice(name, spec, tmp_path):
    _skip(spec, "fit_twice")
    checks.check_fit_twice(name, spec, tmp_path)


@pytest.mark.parametrize(("name", "spec"), params("resume"))
def test_resume_parity(name, spec, tmp_path):
    _skip(spec, "resume")
    checks.check_resume(name, spec, tmp_path)


@pytest.mark.parametrize(("name", "spec"), params("bf16"))
def test_bf16_mixed(name, spec, tmp_path):
    _skip(spec, "bf16")
    checks.check_bf16(name, spec, tmp_path)


@pytest.mark.parametrize(("name", "spec"), params("fp16"))
def test_fp16_loss_scaling(name, spec, tmp_path):
    _skip(spec, "fp16")
    checks.check_fp16(name, spec, tmp_path)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    items = [(tid, name) for name, spec, tid in SPECS if "ddp" not in spec.skip]
    if not items:
        return {}
    return checks.run_ddp_fits(items, tmp_path_factory.mktemp("ddp"))


@pytest.mark.ddp
@pytest.mark.parametrize(("name", "spec"), params("ddp"))
def test_ddp_two_processes(name, spec, ddp_results, request):
    _skip(spec, "ddp")
    tid = request.node.callspec.id
    checks.check_ddp_result(name, ddp_results[tid])
