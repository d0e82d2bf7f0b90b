"""The "everything" recipe (:mod:`tests.conformance.recipe`): setup, optimisation, monitoring
and guard components attached at once (the way users attach them) fit, crash and resume
bitwise (with ExactResume and a shuffled loader), run under bf16-mixed and fp16 with a loss
scaler, and under 2-process DDP end identical on both ranks, crashed and resumed or not."""

from __future__ import annotations

import pytest
import torch

from tests.conformance.checks import fp16_plugin, launch_two_ranks
from tests.conformance.recipe import fit_everything, straight_and_resumed
from tests.helpers.utils import state_diff


@pytest.mark.slow
def test_everything_recipe_crashes_and_resumes_bitwise(tmp_path):
    straight, resumed = straight_and_resumed(tmp_path, exact=True)
    diff = state_diff(straight, resumed)
    assert not diff, diff[:8]
    # the check can fail: without ExactResume the shuffled order after the resume is another
    straight, resumed = straight_and_resumed(tmp_path / "plain", exact=False)
    assert any(k.startswith("model/") for k in state_diff(straight, resumed))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_everything_recipe_runs_mixed_precision(tmp_path, precision):
    if precision == "16-mixed":  # fp16 autocast with a real loss scaler, on CPU
        trainer, state = fit_everything(tmp_path, epochs=2, plugins=[fp16_plugin()])
    else:
        trainer, state = fit_everything(tmp_path, epochs=2, precision=precision)
    assert trainer.state.finished
    bad = [k for k, v in state.items() if k.startswith("model/") and not torch.isfinite(v.float()).all()]
    assert not bad


@pytest.mark.ddp
@pytest.mark.slow
def test_everything_recipe_under_ddp_ranks_agree_and_resume_bitwise(tmp_path):
    codes = launch_two_ranks(["-m", "tests.conformance.recipe", str(tmp_path)], tmp_path, timeout=120)
    logs = "".join((tmp_path / f"worker{r}.log").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], logs
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    diff = state_diff(r0["straight"], r1["straight"])
    assert not diff, f"the ranks end the DDP fit in different states: {diff[:8]}"
    trained = [
        k for k, v in r0["initial"].items() if k.endswith("weight") and not torch.equal(v, r0["straight"][k])
    ]
    assert "model/head.2.weight" in trained and "model/backbone.0.0.weight" in trained  # training happened
    for rank, r in enumerate((r0, r1)):
        diff = state_diff(r["straight"], r["resumed"])
        assert not diff, (
            f"rank {rank}: the crashed and resumed DDP fit differs from the straight one: {diff[:8]}"
        )
