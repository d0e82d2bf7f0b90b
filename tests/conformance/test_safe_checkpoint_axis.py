"""The SafeCheckpointIO axis of the contract: every component resumes exactly through
pickle-free checkpoints, with every way to unpickle made to fail during the resume."""

from __future__ import annotations

import pytest

from lightning_tricks import SafeCheckpointIO
from tests.conformance import checks
from tests.conformance.build import kind_of, resolve
from tests.conformance.settings import spec_ids
from tests.finetune.test_safe_checkpoint_io import no_unpickling

PARAMS = [
    pytest.param(name, spec, id=tid)
    for name, spec, tid in spec_ids()
    if "resume" not in spec.skip and kind_of(resolve(name)) != "plugin"
]


@pytest.mark.parametrize(("name", "spec"), PARAMS)
def test_resume_parity_through_safe_checkpoints(name, spec, tmp_path):
    checks.check_resume(
        name, spec, tmp_path, epochs=3, plugins=lambda: [SafeCheckpointIO()], resume_context=no_unpickling
    )
