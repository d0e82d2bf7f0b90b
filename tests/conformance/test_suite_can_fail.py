"""The conformance suite must be able to fail: broken components are caught, the control passes."""

from __future__ import annotations

import pytest

from tests.conformance import checks
from tests.conformance.broken import BROKEN_SPECS
from tests.conformance.spec import Spec


def test_control_component_passes_every_check(tmp_path):
    checks.check_construct("GoodLRDecay", Spec())
    checks.check_pickle("GoodLRDecay", Spec())
    checks.check_cli("GoodLRDecay", Spec(init_args={"factor": 0.25}), tmp_path / "cli")
    checks.check_resume("GoodLRDecay", Spec(), tmp_path / "resume")
    checks.check_fit_twice("GoodLRDecay", Spec(), tmp_path / "twice")
    checks.check_bf16("GoodLRDecay", Spec(), tmp_path / "bf16")


def test_state_lost_on_resume_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="resumed run differs"):
        checks.check_resume("ForgetfulLRDecay", Spec(), tmp_path)


def test_state_kept_across_fits_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="second fit"):
        checks.check_fit_twice("StaleAfterFirstFit", Spec(), tmp_path)


@pytest.mark.ddp
def test_weights_changed_on_one_rank_are_caught(tmp_path):
    items = [(tid, name) for tid, (name, _) in BROKEN_SPECS.items()]
    results = checks.run_ddp_fits(items, tmp_path)
    checks.check_ddp_result("GoodLRDecay", results["broken:GoodLRDecay"])
    with pytest.raises(AssertionError, match="ranks' weights differ"):
        checks.check_ddp_result("OneRankNudge", results["broken:OneRankNudge"])
