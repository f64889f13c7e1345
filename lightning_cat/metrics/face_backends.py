"""One option picks the face detector and embedder of FDFR and ISM: :func:`load_face_models`.

Backends (``face_backend``):

* ``mtcnn_facenet`` (default): facenet-pytorch's MTCNN (weights in its wheel) and, for ISM, a
  FaceNet InceptionResnetV1 from ``embedder_weights`` (a local state dict).
* ``dlib``: dlib's HOG detector and 5-point aligned ResNet descriptor; real weights from the
  ``faces`` extra (``pip install 'lightning-cat[faces]'``), nothing else to configure.
* ``insightface``: insightface's RetinaFace/SCRFD detector and ArcFace recognizer, ONNX files in
  ``models_dir`` (e.g. the ``buffalo_l`` pack; ``pip install 'lightning-cat[insightface]'``). The
  papers' model families, not their weights; not exercised with real weights in this repository.

The papers' evaluation (RetinaFace >= 0.9 + ArcFace, largest face) is closest to
``insightface`` with ``min_confidence=0.9`` and ISM's ``face="largest"``.
"""

from __future__ import annotations

import os
from typing import Literal

from lightning_cat.metrics.face_models import FaceDetector, FaceEmbedder
from lightning_cat.options import check_arguments

__all__ = ["FaceBackend", "default_min_confidence", "load_face_models"]

#: Face detector + embedder pair behind FDFR and ISM.
FaceBackend = Literal["mtcnn_facenet", "dlib", "insightface"]

_DEFAULT_MIN_CONFIDENCE = {"mtcnn_facenet": 0.0, "dlib": 0.0, "insightface": 0.5}
_PROBABILITY_BACKENDS = ("mtcnn_facenet", "insightface")  # their confidences are probabilities


def default_min_confidence(backend: FaceBackend) -> float:
    """The detection threshold used when none is given (MTCNN: keep all; dlib: its own 0; insightface: 0.5)."""
    return _DEFAULT_MIN_CONFIDENCE[backend]


def check_min_confidence(backend: FaceBackend, min_confidence: float | None) -> float:
    """``min_confidence``, or the backend's default, checked against the backend's score range.

    Raises:
        ValueError: for a probability backend and a value outside ``[0, 1]``.
    """
    value = default_min_confidence(backend) if min_confidence is None else float(min_confidence)
    if backend in _PROBABILITY_BACKENDS and not 0.0 <= value <= 1.0:
        raise ValueError(f"face_min_confidence must lie in [0, 1] for face_backend={backend!r}, got {value}")
    return value


def load_face_models(
    backend: FaceBackend = "mtcnn_facenet",
    embedder: bool = True,
    min_confidence: float | None = None,
    embedder_weights: str | os.PathLike | None = None,
    models_dir: str | os.PathLike | None = None,
) -> tuple[FaceDetector, FaceEmbedder | None]:
    """The detector and (when ``embedder``) the embedder of ``backend``, from local files only.

    Args:
        backend: ``mtcnn_facenet``, ``dlib`` or ``insightface`` (see the module docstring).
        embedder: also build the identity embedder (ISM needs it; FDFR does not).
        min_confidence: detections below it are not faces; ``None``: the backend's default. dlib's
            scores are SVM/MMOD margins (any real number), the others' are probabilities.
        embedder_weights: FaceNet state dict (``mtcnn_facenet`` with ``embedder``).
        models_dir: insightface model folder (``insightface``).

    Raises:
        ValueError: for an unknown backend, a missing required path or a bad ``min_confidence``.
        FileNotFoundError: for a missing file or folder.
        ModuleNotFoundError: when the backend's package is not installed (the message says how).
    """
    check_arguments("load_face_models", load_face_models, {"backend": backend, "embedder": embedder})
    threshold = check_min_confidence(backend, min_confidence)
    if backend == "dlib":
        from lightning_cat.metrics.face_dlib import DlibDetector, DlibEmbedder

        return DlibDetector(min_confidence=threshold), DlibEmbedder() if embedder else None
    if backend == "insightface":
        from lightning_cat.metrics.face_insightface import InsightFaceDetector, InsightFaceEmbedder

        face_embedder = InsightFaceEmbedder(models_dir) if embedder else None  # checks models_dir first
        return InsightFaceDetector(models_dir, min_confidence=threshold), face_embedder
    from lightning_cat.metrics.face_models import FacenetEmbedder, MTCNNDetector

    face_embedder = FacenetEmbedder(embedder_weights) if embedder else None
    return MTCNNDetector(min_confidence=threshold), face_embedder
