"""Conformance settings of the `perfspeed` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    "GradientCheckpointing": [
        # Checkpoint every residual block of the tiny ViT (its blocks have attention + MLP).
        Spec(init_args={"targets": ["backbone.blocks.*"]}, arch="blocks", setup_time=True),
        # Selective mode from YAML (the `mode` Literal), the blocks named by a lone class
        # name (one entry, the one naming rule).
        Spec(
            init_args={"targets": "ResidualBlock", "mode": "selective"},
            arch="blocks",
            id="selective",
            setup_time=True,
            skip={
                "leftovers": "the same forward wrappers as the first spec, which the leftovers check drives"
            },
        ),
    ],
    # The whole LightningModule forward, through AOTAutograd (real tracing, forward and
    # backward graphs) but without code generation, so the suite stays fast; the
    # inductor path has its own slow test in tests/perf/test_compile.py.
    "Compile": Spec(init_args={"backend": "aot_eager"}, arch="cnn", setup_time=True),
    "ChannelsLast": Spec(init_args={}, arch="cnn", setup_time=True),
    # threshold 0 makes it warn; logs every 2 steps over windows of 2 steps.
    "DataStallMonitor": Spec(
        init_args={"log_every_n_steps": 2, "window": 2, "threshold": 0.0},
        skip={"leftovers": "cannot patch the model: times the batch hooks"},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {}

# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {}
