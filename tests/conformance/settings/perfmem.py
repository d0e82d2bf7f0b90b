"""Conformance settings of the `perfmem` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    # one window inside the 4 epochs (16 steps) of the resume check, repeated once
    "MemorySnapshot": Spec(init_args={"start_step": 1, "num_steps": 1, "every_n_steps": 8, "html": False}),
    "SyncDetector": Spec(init_args={"on_error": "ignore", "every_n_steps": 3}),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
