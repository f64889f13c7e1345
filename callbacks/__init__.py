"""Callbacks: metric evaluators, image and manifest writers, the training checkpoint."""

from lightning_cat.callbacks.evaluator import MetricEvaluator
from lightning_cat.callbacks.generated_image_evaluator import GeneratedImageEvaluator
from lightning_cat.callbacks.latent_distortion import LatentDistortionCallback
from lightning_cat.callbacks.metrics_writer import MetricsWriter
from lightning_cat.callbacks.protected_image_evaluator import ProtectedImageEvaluator
from lightning_cat.callbacks.protected_image_writer import ProtectedImageWriter
from lightning_cat.callbacks.purified_set_writer import PurifiedSetWriter
from lightning_cat.callbacks.sample_writer import SampleWriter
from lightning_cat.callbacks.training_checkpoint import TrainingCheckpoint

__all__ = [
    "GeneratedImageEvaluator",
    "LatentDistortionCallback",
    "MetricEvaluator",
    "MetricsWriter",
    "ProtectedImageEvaluator",
    "ProtectedImageWriter",
    "PurifiedSetWriter",
    "SampleWriter",
    "TrainingCheckpoint",
]
