"""Conformance settings of SafeCheckpointIO: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    # The checkpoint plugin: every check (resume parity, fp16 loss scaler, DDP) then writes and
    # resumes from pickle-free checkpoints.
    "SafeCheckpointIO": Spec(
        init_args={},
        skip={"leftovers": "a checkpoint IO plugin: reads and writes files, never sees the model"},
    ),
}

# Exported classes of this area that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

CONSTRUCT_ARGS: dict = {}
