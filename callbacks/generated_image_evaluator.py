"""Evaluator of generated images against the subject's clean images: FID, CLIP-IQA(C), FDFR, ISM, BRISQUE,
nearest-subject SSIM/PSNR and pixel correlation.

Usage (YAML, under ``trainer.callbacks``)::

    - class_path: GeneratedImageEvaluator
      init_args:
        reference_root: data/subject/clean   # default: the datamodule's reference_root
        fid_weights: weights/pt_inception-2015-12-05-6726825d.pth
        clip_weights: weights/open_clip_vit_l_14.pt
        class_name: person
        fdfr: true
        face_backend: dlib                   # or mtcnn_facenet (default), insightface

or in Python: ``Trainer(callbacks=[GeneratedImageEvaluator(fid_extractor="random", clip_backend="tiny")])``.
The module's ``test_step`` / ``validation_step`` returns (or its batch holds) ``generated``: float
images ``[B, 3, H, W]`` in ``[-1, 1]``. Logged names: ``fid``, ``clip_iqa``, ``clip_iqac``,
``fdfr``, ``ism``, ``brisque``, ``subject_ssim``, ``subject_psnr``, ``pixel_correlation`` and any plug-in metric's name (plug-ins get ``update(generated)``), each with
``prefix`` in front.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from torchmetrics import Metric

from lightning_cat.callbacks.evaluator import MetricEvaluator, images_of
from lightning_cat.images import ImageTransform
from lightning_cat.metrics import (
    BRISQUE,
    CLIPIQA,
    CLIPIQAC,
    FDFR,
    FID,
    ISM,
    NearestSubjectSimilarity,
    PixelCorrelation,
    RandomFeatureExtractor,
    load_inception,
    load_shared_clip,
)
from lightning_cat.metrics.clip_models import CLIPBackend
from lightning_cat.metrics.face import FaceChoice
from lightning_cat.metrics.face_backends import FaceBackend, check_min_confidence, load_face_models
from lightning_cat.metrics.feature_extractors import InceptionLayer
from lightning_cat.options import check_arguments

__all__ = ["GeneratedImageEvaluator"]


class GeneratedImageEvaluator(MetricEvaluator):
    """FID, CLIP-IQA, CLIP-IQAC, FDFR, ISM and BRISQUE of generated images (see the module docstring).

    Args:
        reference_root: folder of the subject's clean images (FID and ISM reference). ``None``: the
            datamodule's ``reference_root`` attribute.
        reference_resolution: side the reference images are resized/cropped to. ``None``: the
            datamodule's resolution.
        image_key: key of the generated images in the step output or batch.
        fid: compute FID.
        fid_extractor: ``inception`` (torch-fidelity's FID Inception from ``fid_weights``) or
            ``random`` (a seeded random network: tests and tiny configs only).
        fid_weights: local Inception weights file.
        fid_features: Inception feature layer.
        statistics_cache: folder for cached reference statistics (default under ``$LIGHTNING_CAT_CACHE``).
        clip_iqa: compute CLIP-IQA.
        clip_iqa_prompts: its (positive, negative) prompt pairs.
        clip_iqac: compute CLIP-IQAC for ``class_name``.
        class_name: the subject's class.
        clip_backend: ``open_clip``, ``transformers`` or ``tiny``.
        clip_model: open_clip architecture name.
        clip_weights: local open_clip checkpoint file or transformers CLIP folder.
        clip_positional_embedding: ``False``: CLIP-IQA's original backbone (torchmetrics' ``clip_iqa``):
            an open_clip ResNet CLIP (``clip_model: RN50`` with OpenAI's ``RN50.pt``) whose attention
            pool skips its positional embedding, fed unresized images; used by CLIP-IQA and CLIP-IQAC.
        fdfr: compute the face detection failure rate.
        ism: compute the identity score matching.
        face_backend: face detector and embedder of FDFR and ISM: ``mtcnn_facenet`` (MTCNN +
            FaceNet from ``face_embedder_weights``), ``dlib`` (HOG detector + ResNet descriptor,
            real weights from the ``faces`` extra) or ``insightface`` (RetinaFace/SCRFD + ArcFace
            ONNX files in ``face_models_dir``); see :mod:`lightning_cat.metrics.face_backends`.
        face_min_confidence: detections below this confidence do not count as faces. ``None``: the
            backend's default (``mtcnn_facenet`` 0, ``dlib`` 0 (an SVM margin), ``insightface`` 0.5;
            the papers' RetinaFace used 0.9).
        face_embedder_weights: local InceptionResnetV1 state dict for ISM (``mtcnn_facenet``).
        face_models_dir: local insightface model folder, e.g. ``buffalo_l`` (``insightface``).
        ism_face: the face ISM embeds in each image: ``most_confident`` or ``largest`` (the papers').
        brisque: compute BRISQUE (model files of ``pip install --no-deps brisque==0.2.0``).
        subject_similarity: compute ``subject_ssim`` and ``subject_psnr``: each generated image's best
            SSIM / PSNR against any reference (subject) image, averaged (weight-free; see
            :mod:`lightning_cat.metrics.subject`).
        pixel_correlation: compute ``pixel_correlation``, the neighbouring-pixel correlation
            (photographs about 0.9, noise about 0).
        metrics: extra metrics (name -> torchmetrics Metric with ``update(generated)``).
        batch_size: batch size for reference images.
        prefix: prepended to logged names.
    """

    def __init__(
        self,
        reference_root: str | None = None,
        reference_resolution: int | None = None,
        image_key: str = "generated",
        fid: bool = True,
        fid_extractor: Literal["inception", "random"] = "inception",
        fid_weights: str | None = None,
        fid_features: InceptionLayer = 2048,
        statistics_cache: str | None = None,
        clip_iqa: bool = True,
        clip_iqa_prompts: list[tuple[str, str]] | None = None,
        clip_iqac: bool = True,
        class_name: str = "person",
        clip_backend: CLIPBackend = "open_clip",
        clip_model: str = "ViT-L-14",
        clip_weights: str | None = None,
        clip_positional_embedding: bool = True,
        fdfr: bool = False,
        ism: bool = False,
        face_backend: FaceBackend = "mtcnn_facenet",
        face_min_confidence: float | None = None,
        face_embedder_weights: str | None = None,
        face_models_dir: str | None = None,
        ism_face: FaceChoice = "most_confident",
        brisque: bool = False,
        subject_similarity: bool = False,
        pixel_correlation: bool = False,
        metrics: dict[str, Metric] | None = None,
        batch_size: int = 16,
        prefix: str = "",
    ) -> None:
        name = type(self).__name__
        check_arguments(name, type(self).__init__, locals())  # Literal choices, from the signature
        super().__init__(prefix)
        self._check_face_options(fdfr, ism, face_backend, face_min_confidence, face_embedder_weights, face_models_dir)
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        self.reference_root = reference_root
        self.reference_resolution = reference_resolution
        self.image_key = image_key
        self.statistics_cache = statistics_cache
        self.batch_size = batch_size
        self._prepared = False

        if fid:
            if fid_extractor == "inception":
                extractor = load_inception(fid_weights, num_features=fid_features)
            else:
                extractor = RandomFeatureExtractor()
            self.metrics["fid"] = FID(extractor)
        if clip_iqa or clip_iqac:
            clip = load_shared_clip(clip_backend, clip_model, clip_weights, clip_positional_embedding)
            if clip_iqa:
                self.metrics["clip_iqa"] = CLIPIQA(clip, clip_iqa_prompts or (("Good photo.", "Bad photo."),))
            if clip_iqac:
                self.metrics["clip_iqac"] = CLIPIQAC(clip, class_name=class_name)
        if fdfr or ism:
            detector, embedder = load_face_models(
                face_backend, ism, face_min_confidence, face_embedder_weights, face_models_dir
            )
            if fdfr:
                self.metrics["fdfr"] = FDFR(detector)
            if ism:
                self.metrics["ism"] = ISM(detector, embedder, face=ism_face)
        if brisque:
            self.metrics["brisque"] = BRISQUE()
        if subject_similarity:
            self.metrics["subject_ssim"] = NearestSubjectSimilarity("ssim")
            self.metrics["subject_psnr"] = NearestSubjectSimilarity("psnr")
        if pixel_correlation:
            self.metrics["pixel_correlation"] = PixelCorrelation()
        self.add_metrics(metrics)

    @staticmethod
    def _check_face_options(
        fdfr: bool,
        ism: bool,
        backend: FaceBackend,
        min_confidence: float | None,
        embedder_weights: str | None,
        models_dir: str | None,
    ) -> None:
        """Fail before any model is loaded when the face options cannot work together."""
        name = GeneratedImageEvaluator.__name__
        try:
            check_min_confidence(backend, min_confidence)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        if ism and backend == "mtcnn_facenet" and embedder_weights is None:
            raise ValueError(
                f"{name}: ism=True needs face_embedder_weights (a local InceptionResnetV1 state dict) with "
                "face_backend='mtcnn_facenet'; face_backend='dlib' needs no weights file"
            )
        if (fdfr or ism) and backend == "insightface" and models_dir is None:
            raise ValueError(
                f"{name}: face_backend='insightface' needs face_models_dir (a local insightface model folder, "
                "e.g. buffalo_l with det_10g.onnx and w600k_r50.onnx)"
            )

    def _reference(self, trainer: Trainer) -> tuple[str, ImageTransform]:
        datamodule = getattr(trainer, "datamodule", None)
        root = self.reference_root or getattr(datamodule, "reference_root", None)
        if root is None:
            raise ValueError(
                f"{type(self).__name__}: FID, ISM and subject_ssim/psnr need the subject's clean images: set reference_root "
                "(or use a datamodule with a reference_root, e.g. EvaluationDataModule)"
            )
        resolution = self.reference_resolution
        if resolution is None:
            transform = getattr(datamodule, "transform", None)
            if transform is None:
                raise ValueError(f"{type(self).__name__}: set reference_resolution (the datamodule has no transform)")
            resolution = transform.resolution
        return root, ImageTransform(resolution=resolution, crop="center", small_images="upscale")

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._prepared or not ({"fid", "ism", "subject_ssim"} & set(self.metrics)):
            return
        root, transform = self._reference(trainer)
        if "fid" in self.metrics:
            self.metrics["fid"].set_reference_folder(root, transform, self.batch_size, self.statistics_cache)
        if "ism" in self.metrics:
            self.metrics["ism"].set_reference_folder(root, transform, self.batch_size)
        for name in ("subject_ssim", "subject_psnr"):
            if name in self.metrics:
                self.metrics[name].set_reference_folder(root, transform, self.batch_size)
        self._prepared = True

    def update_metrics(self, inputs: Mapping[str, Any]) -> None:
        images = images_of(inputs, self.image_key)
        if images is None:
            return
        for metric in self.metrics.values():
            metric.update(images)
