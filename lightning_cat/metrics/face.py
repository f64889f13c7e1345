"""Face metrics of generated images: FDFR and ISM (as in Anti-DreamBooth's and CAT's evaluation).

* :class:`FDFR`: face detection failure rate, the fraction of images in which the detector finds
  no face (higher: the protection worked).
* :class:`ISM`: identity score matching, the mean cosine similarity between the embedding of one
  face of each generated image (``face``: the largest, as the papers, or the most confident) and
  the mean of the raw embeddings of the subject's clean faces; images without a detected face are
  left out (lower: the protection worked).

Detector and embedder are pluggable (see :mod:`lightning_cat.metrics.face_models` and
:func:`lightning_cat.metrics.face_backends.load_face_models`). The papers' code uses deepface's
RetinaFace (confidence >= 0.9) and ArcFace on aligned faces; the backends here are MTCNN + FaceNet
(default), dlib (real weights, offline) and insightface's RetinaFace/SCRFD + ArcFace ONNX models.

Example::

    detector = MTCNNDetector()
    fdfr = FDFR(detector)
    ism = ISM(detector, FacenetEmbedder("weights/facenet-vggface2.pt"), face="largest")
    ism.set_reference(clean_images)
    for images in generated:
        fdfr.update(images)
        ism.update(images)
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lightning_cat.images import ImageTransform
from lightning_cat.metrics.face_models import FaceDetector, FaceEmbedder
from lightning_cat.metrics.folders import iter_image_batches
from lightning_cat.options import check_arguments

__all__ = ["FDFR", "ISM", "FaceChoice", "select_face"]

#: Which detected face of an image ISM embeds: the largest box (the papers' choice) or the most confident one.
FaceChoice = Literal["largest", "most_confident"]


def select_face(detections: torch.Tensor, face: FaceChoice) -> torch.Tensor:
    """The detection row of the face to embed among one image's ``[N, 5+]`` detections (``N >= 1``).

    Args:
        detections: rows ``x1, y1, x2, y2, confidence, ...``, most confident first.
        face: ``largest`` (largest box area; ties: the more confident) or ``most_confident`` (the first row).
    """
    if face == "most_confident":
        return detections[0]
    areas = (detections[:, 2] - detections[:, 0]).clamp(min=0) * (detections[:, 3] - detections[:, 1]).clamp(min=0)
    return detections[int(torch.argmax(areas))]  # argmax returns the first maximum: the more confident one


class FDFR(Metric):
    """Fraction of images where ``detector`` finds no face.

    Args:
        detector: a :class:`~lightning_cat.metrics.face_models.FaceDetector`.
        **kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = None  # higher means the protection worked
    full_state_update = False

    def __init__(self, detector: FaceDetector, **kwargs) -> None:
        super().__init__(**kwargs)
        self.detector = detector
        self.add_state("failures", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor) -> None:
        """Add images (``[B, 3, H, W]`` in ``[-1, 1]``)."""
        detections = self.detector(images)
        self.failures += sum(int(found.shape[0] == 0) for found in detections)
        self.total += len(detections)

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(float("nan"), device=self.total.device)
        return self.failures.float() / self.total


class ISM(Metric):
    """Mean cosine of generated faces' embeddings to the subject's reference embedding.

    The reference embedding is the mean of the raw (not normalized) embeddings of the chosen face
    of each clean image that has one, as in Anti-DreamBooth's and CAT's code. Each generated image
    with a detected face contributes ``cos(embedding of its chosen face, reference)``; images
    without a face are left out (FDFR counts them).

    Args:
        detector: a :class:`~lightning_cat.metrics.face_models.FaceDetector`.
        embedder: a :class:`~lightning_cat.metrics.face_models.FaceEmbedder`.
        face: which face of an image is embedded, for the clean and the generated images alike:
            ``most_confident`` (the default) or ``largest`` (the papers' choice).
        **kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = None  # lower means the protection worked
    full_state_update = False

    def __init__(
        self, detector: FaceDetector, embedder: FaceEmbedder, face: FaceChoice = "most_confident", **kwargs
    ) -> None:
        check_arguments(type(self).__name__, ISM.__init__, {"face": face})
        super().__init__(**kwargs)
        self.detector = detector
        self.embedder = embedder
        self.face = face
        self.register_buffer("reference_embedding", None, persistent=False)
        self.add_state("similarity_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("detected", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def face_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw embeddings ``[F, D]`` of the chosen face of each image with one, and which images had one ``[B]``."""
        detections = self.detector(images)
        has_face = torch.tensor([found.shape[0] > 0 for found in detections], device=images.device)
        if not has_face.any():
            return torch.zeros(0, 1, device=images.device), has_face
        rows = torch.stack([select_face(found, self.face) for found in detections if found.shape[0] > 0])
        return self.embedder(images[has_face], rows.to(images.device)).float(), has_face

    def set_reference(self, clean_images: torch.Tensor | list[torch.Tensor]) -> int:
        """Set the subject's reference: the mean raw embedding of the clean faces (batches may be given as a list).

        Returns:
            How many clean images had a detected face.

        Raises:
            ValueError: if no clean image has a detectable face.
        """
        batches = clean_images if isinstance(clean_images, (list, tuple)) else [clean_images]
        found = [e for e in (self.face_embeddings(batch)[0] for batch in batches) if e.shape[0] > 0]
        if not found:
            raise ValueError("ISM: no face was detected in any clean reference image")
        embeddings = torch.cat(found)
        self.reference_embedding = embeddings.mean(dim=0).to(self.similarity_sum.device)
        return int(embeddings.shape[0])

    def set_reference_folder(self, folder: str | os.PathLike, transform: ImageTransform, batch_size: int = 16) -> int:
        """:meth:`set_reference` from the images of ``folder`` (preprocessed by ``transform``)."""
        device = self.similarity_sum.device
        batches = [b.to(device) for b in iter_image_batches(folder, transform, batch_size, what="ISM reference folder")]
        return self.set_reference(batches)

    def update(self, images: torch.Tensor) -> None:
        """Add generated images (``[B, 3, H, W]`` in ``[-1, 1]``)."""
        if self.reference_embedding is None:
            raise RuntimeError("ISM: call set_reference(clean_images) before update()")
        embeddings, has_face = self.face_embeddings(images)
        if embeddings.shape[0]:
            reference = F.normalize(self.reference_embedding.to(embeddings.device), dim=0)
            cosines = F.normalize(embeddings, dim=-1) @ reference
            self.similarity_sum += cosines.double().sum().to(self.similarity_sum.device)
            self.detected += int(has_face.sum())

    def compute(self) -> torch.Tensor:
        if self.detected == 0:
            return torch.tensor(float("nan"), device=self.detected.device)
        return (self.similarity_sum / self.detected).float()
