"""Evaluation metrics (torchmetrics ``Metric`` subclasses, usable without Lightning)."""

from lightning_cat.metrics.brisque import BRISQUE, brisque_features, load_brisque_model
from lightning_cat.metrics.clip_alignment import CLIPTextSimilarity, CLIPZeroShotProbability
from lightning_cat.metrics.clip_iqa import CLIPIQA, CLIPIQAC, DEFAULT_IQA_PROMPTS, antonym_probabilities
from lightning_cat.metrics.clip_models import (
    CLIP_BACKENDS,
    CLIPEncoder,
    build_tiny_clip,
    load_clip,
    load_shared_clip,
    without_positional_embedding,
)
from lightning_cat.metrics.face import FDFR, ISM, select_face
from lightning_cat.metrics.face_backends import load_face_models
from lightning_cat.metrics.face_dlib import DlibDetector, DlibEmbedder
from lightning_cat.metrics.face_insightface import InsightFaceDetector, InsightFaceEmbedder
from lightning_cat.metrics.face_models import FaceDetector, FaceEmbedder, FacenetEmbedder, MTCNNDetector, crop_faces
from lightning_cat.metrics.feature_extractors import (
    InceptionFeatures,
    RandomFeatureExtractor,
    load_inception,
    module_identity,
)
from lightning_cat.metrics.fid import FID, default_statistics_cache, reference_cache_key
from lightning_cat.metrics.folders import iter_image_batches
from lightning_cat.metrics.latent_distortion import LatentDistortion
from lightning_cat.metrics.similarity import PSNR, SSIM, LPIPSDistance, per_image_psnr
from lightning_cat.metrics.subject import (
    NearestSubjectSimilarity,
    PixelCorrelation,
    nearest_subject_similarity,
    pixel_correlation,
)

__all__ = [
    "BRISQUE",
    "CLIPIQA",
    "CLIPIQAC",
    "CLIP_BACKENDS",
    "DEFAULT_IQA_PROMPTS",
    "FDFR",
    "FID",
    "ISM",
    "PSNR",
    "SSIM",
    "CLIPEncoder",
    "CLIPTextSimilarity",
    "CLIPZeroShotProbability",
    "DlibDetector",
    "DlibEmbedder",
    "FaceDetector",
    "FaceEmbedder",
    "FacenetEmbedder",
    "InceptionFeatures",
    "InsightFaceDetector",
    "InsightFaceEmbedder",
    "MTCNNDetector",
    "LPIPSDistance",
    "LatentDistortion",
    "NearestSubjectSimilarity",
    "PixelCorrelation",
    "RandomFeatureExtractor",
    "antonym_probabilities",
    "brisque_features",
    "build_tiny_clip",
    "crop_faces",
    "default_statistics_cache",
    "iter_image_batches",
    "load_brisque_model",
    "load_clip",
    "load_shared_clip",
    "load_face_models",
    "load_inception",
    "module_identity",
    "nearest_subject_similarity",
    "per_image_psnr",
    "pixel_correlation",
    "reference_cache_key",
    "select_face",
    "without_positional_embedding",
]
