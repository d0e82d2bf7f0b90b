"""Lightning layer for the `inference` area."""

from lightning_tricks.functional.inference.features import FeatureExtractor
from lightning_tricks.inference.features import FeaturePredict
from lightning_tricks.inference.prediction_writer import PredictionWriter, load_predictions
from lightning_tricks.inference.tta_evaluation import TTAEvaluation
from lightning_tricks.inference.tta_predict import TTAPredict

__all__: list[str] = [
    "FeatureExtractor",
    "FeaturePredict",
    "PredictionWriter",
    "TTAEvaluation",
    "TTAPredict",
    "load_predictions",
]
