"""RetinaFace-family detection + ArcFace embeddings from insightface's ONNX models in a local folder.

The closest available match to the papers' face models (Anti-DreamBooth and CAT run deepface's
Keras RetinaFace, confidence >= 0.9, and ArcFace on aligned faces): insightface's model packs hold
the same model families, not the same weights. With the ``buffalo_l`` pack, ``det_10g.onnx`` is
the SCRFD-10GF detector (insightface's RetinaFace successor) and ``w600k_r50.onnx`` an ArcFace
ResNet-50 (WebFace600K); deepface's ArcFace is a Keras ResNet-34 with its own weights and aligns
by an eye-line rotation, while here faces are warped onto ArcFace's 5-point template (``norm_crop``).
Scores from this backend can be expected near, not equal to, the papers' numbers.

Not exercised with real weights in this repository's tests (no model files and no network there):
only the error paths are tested. Install with ``pip install 'lightning-cat[insightface]'``
(``insightface onnxruntime``) and unpack ``buffalo_l.zip`` (insightface's GitHub releases, model
zoo; non-commercial research licence) into a folder given as ``face_models_dir``. Nothing is
downloaded by this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_cat.metrics.face_models import detection_rows
from lightning_cat.pixels import to_uint8

__all__ = ["InsightFaceDetector", "InsightFaceEmbedder", "insightface_model_file"]

INSTALL_HINT = "pip install 'lightning-cat[insightface]' (or: pip install insightface onnxruntime)"
DOWNLOAD_HINT = (
    "unpack insightface's buffalo_l.zip (github.com/deepinsight/insightface/releases, model zoo) into a local "
    "folder and set face_models_dir to it; nothing is downloaded"
)
DETECTOR_FILE = "det_10g.onnx"
EMBEDDER_FILE = "w600k_r50.onnx"
_LANDMARK_COLUMNS = slice(5, 15)  # detection rows: x1, y1, x2, y2, score, then 5 (x, y) landmarks


def insightface_model_file(models_dir: str | os.PathLike | None, file: str) -> Path:
    """``models_dir / file``, checked.

    Raises:
        ValueError: if ``models_dir`` is ``None``.
        FileNotFoundError: if the folder or the file does not exist.
    """
    if models_dir is None:
        raise ValueError(f"face_backend='insightface' needs face_models_dir: {DOWNLOAD_HINT}")
    folder = Path(models_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"face_models_dir '{folder}' does not exist: {DOWNLOAD_HINT}")
    path = folder / file
    if not path.is_file():
        raise FileNotFoundError(f"face_models_dir '{folder}' has no {file}: {DOWNLOAD_HINT}")
    return path


def _load_onnx_model(path: Path) -> Any:
    """insightface's model object for an ONNX file, on the CPU execution provider."""
    try:
        from insightface.model_zoo import get_model
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"face_backend='insightface' needs insightface and onnxruntime: {INSTALL_HINT}"
        ) from error
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    if model is None:
        raise ValueError(f"insightface could not tell what model '{path}' is (not a detector or recognizer)")
    return model


def bgr_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """``[B, 3, H, W]`` in ``[-1, 1]`` -> B contiguous ``[H, W, 3]`` uint8 BGR arrays (insightface's OpenCV order)."""
    pixels = to_uint8(images).flip(1).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image) for image in pixels]


class InsightFaceDetector(nn.Module):
    """insightface's RetinaFace/SCRFD ONNX detector as a :class:`~lightning_cat.metrics.face_models.FaceDetector`.

    Rows are ``[N, 15]``: the box, the detection probability, then the 5 landmarks (eyes, nose,
    mouth corners) as ``x, y`` pairs, which :class:`InsightFaceEmbedder` uses for alignment.
    Untested with real weights here (see the module docstring).

    Args:
        models_dir: local folder of an insightface model pack (e.g. ``buffalo_l``).
        file: the detector's file in it.
        min_confidence: detections below this probability are dropped (the papers' RetinaFace: 0.9;
            insightface's default: 0.5).
        input_size: side of the square the detector resizes images into.

    Raises:
        ValueError: if ``models_dir`` is ``None`` or ``min_confidence`` is outside ``[0, 1]``.
        FileNotFoundError: if the folder or the file is missing.
        ModuleNotFoundError: if insightface (or onnxruntime) is not installed.
    """

    def __init__(
        self,
        models_dir: str | os.PathLike | None,
        file: str = DETECTOR_FILE,
        min_confidence: float = 0.5,
        input_size: int = 640,
    ) -> None:
        super().__init__()
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"InsightFaceDetector: min_confidence must lie in [0, 1], got {min_confidence}")
        self.model = _load_onnx_model(insightface_model_file(models_dir, file))
        self.min_confidence = float(min_confidence)
        self.input_size = (int(input_size), int(input_size))
        self.model.prepare(ctx_id=-1, det_thresh=self.min_confidence, input_size=self.input_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        results = []
        for pixels in bgr_arrays(images):
            found, landmarks = self.model.detect(pixels, input_size=self.input_size)
            landmarks = np.zeros((len(found), 10)) if landmarks is None else np.reshape(landmarks, (len(found), 10))
            results.append(detection_rows(found[:, :4], found[:, 4], landmarks, self.min_confidence))
        return results


class InsightFaceEmbedder(nn.Module):
    """insightface's ArcFace ONNX recognizer as a :class:`~lightning_cat.metrics.face_models.FaceEmbedder`.

    Each face is warped onto ArcFace's 5-point template (112 px, ``insightface.utils.face_align.norm_crop``)
    from the landmarks of :class:`InsightFaceDetector`'s rows; returns the raw (not normalized)
    512-d embeddings. Untested with real weights here (see the module docstring).

    Args:
        models_dir: local folder of an insightface model pack (e.g. ``buffalo_l``).
        file: the recognizer's file in it.

    Raises:
        ValueError: if ``models_dir`` is ``None``.
        FileNotFoundError: if the folder or the file is missing.
        ModuleNotFoundError: if insightface (or onnxruntime) is not installed.
    """

    def __init__(self, models_dir: str | os.PathLike | None, file: str = EMBEDDER_FILE) -> None:
        super().__init__()
        self.model = _load_onnx_model(insightface_model_file(models_dir, file))
        self.model.prepare(ctx_id=-1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        if boxes.shape[-1] < _LANDMARK_COLUMNS.stop:
            raise ValueError(
                "InsightFaceEmbedder needs the 5 landmarks of InsightFaceDetector's rows ([B, 15]), "
                f"got rows of {boxes.shape[-1]} columns: use face_backend='insightface' for detection too"
            )
        from insightface.utils.face_align import norm_crop

        size = int(self.model.input_size[0])
        landmarks = boxes[:, _LANDMARK_COLUMNS].detach().cpu().double().numpy().reshape(-1, 5, 2)
        faces = [
            norm_crop(pixels, points, image_size=size)
            for pixels, points in zip(bgr_arrays(images), landmarks, strict=True)
        ]
        vectors = self.model.get_feat(faces)
        return torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=images.device)
