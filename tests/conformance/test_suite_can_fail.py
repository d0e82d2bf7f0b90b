"""The conformance suite must be able to fail: broken components are caught, the control passes."""

from __future__ import annotations

import pytest

from tests.conformance import checks
from tests.conformance.broken import BROKEN_SPECS
from tests.conformance.leftovers import check_leftovers
from tests.conformance.spec import Spec


def test_control_component_passes_every_check(tmp_path):
    checks.check_construct("GoodLRDecay", Spec())
    checks.check_pickle("GoodLRDecay", Spec())
    checks.check_cli("GoodLRDecay", Spec(init_args={"factor": 0.25}), tmp_path / "cli")
    checks.check_resume("GoodLRDecay", Spec(), tmp_path / "resume")
    checks.check_fit_twice("GoodLRDecay", Spec(), tmp_path / "twice")
    checks.check_bf16("GoodLRDecay", Spec(), tmp_path / "bf16")
    checks.check_fp16("GoodLRDecay", Spec(), tmp_path / "fp16")
    check_leftovers("GoodLRDecay", Spec(), tmp_path / "leftovers")


def test_hook_left_by_a_failed_step_is_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"RuntimeError raised in fit \(step0\)") as err:
        check_leftovers("HookUntilBatchEnd", Spec(), tmp_path)
    assert "module backbone: _forward_hooks is 1, 0 in a fresh one" in str(err.value)


def test_later_fit_changed_by_a_failure_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="a fit after the failures differs from a fresh fit"):
        check_leftovers("CautiousAfterFailure", Spec(), tmp_path)


def test_dropout_resume_without_exact_resume_is_caught(tmp_path):
    """The resume check's model has dropout: it passes (the control above) only because the
    check attaches ExactResume; without it the resumed run draws other dropout masks."""
    with pytest.raises(AssertionError, match=r"resumed run differs") as err:
        checks.check_resume("GoodLRDecay", Spec(), tmp_path, epochs=2, crash_epoch=1, exact=False)
    assert "model/" in str(err.value)


def test_state_lost_on_resume_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="resumed run differs"):
        checks.check_resume("ForgetfulLRDecay", Spec(), tmp_path)


def test_callback_state_lost_on_resume_is_caught_with_equal_weights(tmp_path):
    with pytest.raises(AssertionError, match=r"resumed run differs.*\(0 in the model\)") as err:
        checks.check_resume("ForgetfulStepCounter", Spec(), tmp_path, epochs=2, crash_epoch=1)
    assert "callback/ForgetfulStepCounter/steps: 8 != 4" in str(err.value)


def test_optimizer_state_lost_on_resume_is_caught_with_equal_weights(tmp_path):
    with pytest.raises(AssertionError, match=r"resumed run differs.*\(0 in the model\)") as err:
        checks.check_resume("ForgetfulGradEMA", Spec(), tmp_path, epochs=2, crash_epoch=1)
    assert "optimizer0/state/0/grad_ema" in str(err.value)


def test_inf_gradient_statistics_reaching_the_weights_are_caught(tmp_path):
    with pytest.raises(AssertionError, match="non-finite weights after a 16-mixed fit"):
        checks.check_fp16("RunningNormScaler", Spec(), tmp_path)


def test_training_that_stalls_after_a_skipped_step_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="keeps skipping"):
        checks.check_fp16("RunningNormScaler", Spec(init_args={"where": "backward"}), tmp_path)


def test_gradient_statistics_of_scaled_gradients_are_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"not those of the unscaled gradients.*scaled/grad_norm"):
        checks.check_fp16("ScaledGradNormLogger", Spec(), tmp_path)


def test_scaler_state_lost_on_resume_is_caught(tmp_path, monkeypatch):
    """A precision plugin that does not restore its loss scaler from the checkpoint."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    monkeypatch.setattr(MixedPrecision, "load_state_dict", lambda self, state: None)
    with pytest.raises(AssertionError, match="under 16-mixed") as err:
        checks.check_fp16("GoodLRDecay", Spec(), tmp_path)
    assert "precision/scale: 32768.0 != 65536.0" in str(err.value)


def test_state_kept_across_fits_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="second fit"):
        checks.check_fit_twice("StaleAfterFirstFit", Spec(), tmp_path)


@pytest.mark.ddp
def test_weights_changed_on_one_rank_are_caught(tmp_path):
    items = [(tid, name) for tid, (name, _) in BROKEN_SPECS.items()]
    results = checks.run_ddp_fits(items, tmp_path)
    checks.check_ddp_result("GoodLRDecay", results["broken:GoodLRDecay"])
    with pytest.raises(AssertionError, match="ranks' states differ"):
        checks.check_ddp_result("OneRankNudge", results["broken:OneRankNudge"])
    with pytest.raises(AssertionError, match=r"ranks' states differ in 1 entries \(1 in the model\)") as err:
        checks.check_ddp_result("OneRankBufferNudge", results["broken:OneRankBufferNudge"])
    assert "model/backbone.0.1.running_mean" in str(err.value)
