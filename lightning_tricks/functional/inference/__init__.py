"""Pure-PyTorch cores for the `inference` area."""

from lightning_tricks.functional.inference._tta_plan import clear_tta_plans, tta_plans
from lightning_tricks.functional.inference.features import FeatureExtractor, extract_features
from lightning_tricks.functional.inference.tta_predict import merge_outputs, tta_predict
from lightning_tricks.functional.inference.views import View, parse_view, parse_views

__all__: list[str] = [
    "FeatureExtractor",
    "View",
    "clear_tta_plans",
    "extract_features",
    "merge_outputs",
    "parse_view",
    "parse_views",
    "tta_plans",
    "tta_predict",
]
