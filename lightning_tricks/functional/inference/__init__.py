"""Pure-PyTorch cores for the `inference` area."""

from lightning_tricks.functional.inference.features import FeatureExtractor, extract_features
from lightning_tricks.functional.inference.tta import merge_outputs, tta_predict
from lightning_tricks.functional.inference.views import View, parse_view, parse_views

__all__: list[str] = [
    "FeatureExtractor",
    "View",
    "extract_features",
    "merge_outputs",
    "parse_view",
    "parse_views",
    "tta_predict",
]
