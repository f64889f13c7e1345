"""Face detectors and embedders behind small interfaces, for FDFR and ISM.

A detector maps images (``[B, 3, H, W]`` in ``[-1, 1]``) to one ``[N_i, 5+]`` tensor per image:
boxes ``x1, y1, x2, y2`` in pixels and a confidence, most confident first (``N_i = 0``: no face);
a detector may add columns after the confidence (e.g. 5 landmarks ``x, y`` for an aligning embedder).
An embedder maps images and one such detection row per image (``[B, 4+]``; at least the box) to
``[B, D]`` identity embeddings.

Adapters shipped here:

* :class:`MTCNNDetector`: facenet-pytorch's MTCNN, whose wheel ships the real detector weights
  (install with ``pip install --no-deps facenet-pytorch==2.6.0``: its metadata pins old torch).
* :class:`FacenetEmbedder`: facenet-pytorch's InceptionResnetV1 with weights from a local file
  (e.g. the VGGFace2 state dict); never downloaded.

More in :mod:`lightning_cat.metrics.face_dlib` (dlib's detectors and ResNet descriptor, real weights
from the ``faces`` extra) and :mod:`lightning_cat.metrics.face_insightface` (RetinaFace/SCRFD +
ArcFace ONNX models from a local folder). Anything with the same call signature plugs into
:class:`~lightning_cat.metrics.FDFR` and :class:`~lightning_cat.metrics.ISM`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_cat.pixels import to_levels

__all__ = ["FaceDetector", "FaceEmbedder", "FacenetEmbedder", "MTCNNDetector", "crop_faces", "detection_rows"]


@runtime_checkable
class FaceDetector(Protocol):
    """``detector(images) -> list of [N_i, 5+]`` (x1, y1, x2, y2, confidence[, extra]; most confident first)."""

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]: ...


@runtime_checkable
class FaceEmbedder(Protocol):
    """``embedder(images, boxes [B, 4+]) -> [B, D]`` identity embeddings (``boxes``: one detection row per image)."""

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor: ...


def detection_rows(
    boxes: np.ndarray, scores: np.ndarray, extra: np.ndarray | None = None, min_confidence: float = 0.0
) -> torch.Tensor:
    """One image's detections as the detector contract wants them: ``[N, 5 + K]`` float32, most confident first.

    Args:
        boxes: ``[N, 4]`` ``x1, y1, x2, y2`` in pixels.
        scores: ``[N]`` confidences.
        extra: optional ``[N, K]`` columns appended after the confidence (e.g. landmarks).
        min_confidence: rows with a lower confidence are dropped.
    """
    columns = [np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1, 1)]
    if extra is not None:
        columns.append(np.asarray(extra, np.float64).reshape(len(columns[0]), -1))
    rows = torch.as_tensor(np.concatenate(columns, axis=1)).float()
    rows = rows[rows[:, 4] >= min_confidence]
    return rows[rows[:, 4].argsort(descending=True, stable=True)]


def crop_faces(images: torch.Tensor, boxes: torch.Tensor, size: int, margin: float = 0.0) -> torch.Tensor:
    """Crop one box per image (enlarged by ``margin`` of its size on each side) and resize to ``size``.

    Returns:
        ``[B, 3, size, size]``, same value range as ``images``.
    """
    height, width = images.shape[-2:]
    crops = []
    for image, box in zip(images, boxes, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
        left, top = max(int(np.floor(x1 - pad_x)), 0), max(int(np.floor(y1 - pad_y)), 0)
        right, bottom = min(int(np.ceil(x2 + pad_x)), width), min(int(np.ceil(y2 + pad_y)), height)
        right, bottom = max(right, left + 1), max(bottom, top + 1)
        crop = image[:, top:bottom, left:right].unsqueeze(0).float()
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(crops)


class MTCNNDetector(nn.Module):
    """facenet-pytorch's MTCNN (real weights ship in its wheel) as a :class:`FaceDetector`.

    Args:
        min_face_size: smallest face side searched, in pixels.
        thresholds: MTCNN's three stage thresholds.
        min_confidence: faces below this final confidence are dropped.

    Raises:
        ModuleNotFoundError: if facenet-pytorch is not installed (the message says how).
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        min_confidence: float = 0.0,
    ) -> None:
        super().__init__()
        try:
            from facenet_pytorch import MTCNN
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "MTCNNDetector needs facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0 "
                "(its metadata pins an old torch; the code runs on current torch)"
            ) from error
        self.mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), keep_all=True)
        self.mtcnn.eval().requires_grad_(False)
        self.min_confidence = float(min_confidence)

    def train(self, mode: bool = True) -> MTCNNDetector:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        device = next(self.mtcnn.parameters()).device
        self.mtcnn.device = device  # facenet-pytorch moves inputs to this attribute's device
        pixels = to_levels(images).permute(0, 2, 3, 1).to(device)  # MTCNN takes [B, H, W, 3] in 0..255
        with torch.autocast(device.type, enabled=False):
            batch_boxes, batch_probs = self.mtcnn.detect(pixels)
        results = []
        for boxes, probs in zip(batch_boxes, batch_probs, strict=True):
            if boxes is None:
                results.append(torch.zeros(0, 5))
                continue
            found = torch.cat(
                [
                    torch.as_tensor(np.asarray(boxes, dtype=np.float64)),
                    torch.as_tensor(np.asarray(probs, dtype=np.float64)).reshape(-1, 1),
                ],
                dim=1,
            ).float()
            found = found[found[:, 4] >= self.min_confidence]
            results.append(found[found[:, 4].argsort(descending=True)])
        return results


class FacenetEmbedder(nn.Module):
    """facenet-pytorch's InceptionResnetV1 (512-d, unit norm) with weights from a local file.

    Faces are cropped from the box with ``margin``, resized to 160 px and standardized as facenet
    expects (``(v - 127.5) / 128`` on 8-bit values).

    Args:
        weights: local state dict of ``InceptionResnetV1`` (e.g. converted VGGFace2 weights).
        margin: relative margin around each box.

    Raises:
        ValueError: if ``weights`` is ``None``.
        FileNotFoundError: if the file does not exist.
    """

    input_size = 160

    def __init__(self, weights: str | os.PathLike | None, margin: float = 0.1) -> None:
        super().__init__()
        if weights is None:
            raise ValueError(
                "FacenetEmbedder needs local weights: set face_embedder_weights to an InceptionResnetV1 state dict "
                "(nothing is downloaded)"
            )
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"face_embedder_weights '{path}' does not exist")
        try:
            from facenet_pytorch import InceptionResnetV1
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "FacenetEmbedder needs facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0"
            ) from error
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # classifier head unused
        self.net.load_state_dict(state, strict=False)
        missing = [k for k in self.net.state_dict() if not k.startswith("logits.") and k not in state]
        if missing:
            raise ValueError(f"face_embedder_weights '{path}' lacks InceptionResnetV1 entries {missing[:4]}...")
        self.net.eval().requires_grad_(False)
        self.margin = margin

    def train(self, mode: bool = True) -> FacenetEmbedder:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        faces = crop_faces(to_levels(images), boxes, self.input_size, self.margin)
        with torch.autocast(faces.device.type, enabled=False):
            return self.net((faces - 127.5) / 128.0)
