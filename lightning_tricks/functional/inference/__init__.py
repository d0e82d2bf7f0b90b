"""Pure-PyTorch cores for the `inference` area."""

from lightning_tricks.functional.inference._tta_plan import clear_tta_plans, tta_plans
from lightning_tricks.functional.inference.features import FeatureExtractor, extract_features
from lightning_tricks.functional.inference.prediction_writer import (
    load_predictions,
    merge_rank_predictions,
    save_rank_predictions,
)
from lightning_tricks.functional.inference.tta_evaluation import tta_evaluation, tta_flips
from lightning_tricks.functional.inference.tta_predict import merge_outputs, tta_predict
from lightning_tricks.functional.inference.views import View, parse_view, parse_views

__all__: list[str] = [
    "FeatureExtractor",
    "View",
    "clear_tta_plans",
    "extract_features",
    "load_predictions",
    "merge_outputs",
    "merge_rank_predictions",
    "parse_view",
    "parse_views",
    "save_rank_predictions",
    "tta_evaluation",
    "tta_flips",
    "tta_plans",
    "tta_predict",
]
