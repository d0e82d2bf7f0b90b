"""Conformance settings of the `inference` team: export name -> Spec (or a list of Specs)."""

from __future__ import annotations

from tests.conformance.spec import Spec

SETTINGS: dict = {
    "TTAPredict": Spec(init_args={"tta_views": ["identity", "hflip"], "tta_merge": "mean_softmax"}),
    "TTAEvaluation": Spec(init_args={"views": ["hflip", "vflip"], "merge": "mean"}),
    "FeaturePredict": Spec(init_args={"feature_layers": ["backbone.0"]}),
    "PredictionWriter": Spec(
        init_args={"dirpath": "predictions"},
        skip={"leftovers": "cannot patch the model: writes what predict_step returns"},
    ),
}

# Exported classes of this team that are not components, with the reason.
NOT_COMPONENTS: dict[str, str] = {
    "FeatureExtractor": "wraps a model (hooks on its submodules); a utility, not a Trainer component",
}


def _feature_extractor_args() -> dict:
    from tests.helpers import SmallCNN

    return {"model": SmallCNN(), "layers": ["backbone.0"]}


# Valid constructor kwargs for exported classes of this team that take objects
# (a model, a dataset): name -> zero-argument callable returning kwargs.
CONSTRUCT_ARGS: dict = {"FeatureExtractor": _feature_extractor_args}
