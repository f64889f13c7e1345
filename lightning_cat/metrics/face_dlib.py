"""dlib's face detectors and identity descriptor, with real weights, offline (the ``faces`` extra).

* :class:`DlibDetector`: dlib's HOG + linear SVM frontal face detector (``model="hog"``, built into
  dlib) or its CNN MMOD detector (``model="cnn"``, ``mmod_human_face_detector.dat``).
* :class:`DlibEmbedder`: dlib's 128-d ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``,
  99.38% on LFW) of the face chip aligned from 5 landmarks (``shape_predictor_5_face_landmarks.dat``)
  by ``dlib.get_face_chip`` (150 px, padding 0.25), as dlib's own face recognition example does.

Install: ``pip install 'lightning-cat[faces]'`` (``dlib-bin``, a prebuilt dlib wheel, and
``face-recognition-models``, which ships the model files; not the ``face_recognition`` package, which
builds dlib from source). The model files are found in the installed ``face_recognition_models``
package without importing it (its ``__init__`` needs ``pkg_resources``).

These are not the papers' models (Anti-DreamBooth and CAT use deepface's RetinaFace + ArcFace):
FDFR and ISM values from this backend are comparable across runs of this backend only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lightning_cat.metrics.face_models import detection_rows
from lightning_cat.options import check_arguments
from lightning_cat.pixels import to_uint8

__all__ = ["DlibDetector", "DlibDetectorModel", "DlibEmbedder", "dlib_model_file", "import_dlib"]

#: dlib's face detectors: the HOG + linear SVM frontal detector or the CNN (MMOD) detector.
DlibDetectorModel = Literal["hog", "cnn"]

MODELS_PACKAGE = "face_recognition_models"
INSTALL_HINT = "pip install 'lightning-cat[faces]' (or: pip install dlib-bin face-recognition-models)"


def import_dlib() -> Any:
    """The ``dlib`` module.

    Raises:
        ModuleNotFoundError: naming the package and the pip command, when dlib is not installed.
    """
    try:
        import dlib
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"face_backend='dlib' needs the dlib package (prebuilt wheel: dlib-bin): {INSTALL_HINT}"
        ) from error
    return dlib


def dlib_model_file(name: str, package: str = MODELS_PACKAGE) -> Path:
    """Path of model file ``name`` shipped by the ``face_recognition_models`` package (found, not imported).

    Raises:
        ModuleNotFoundError: naming the package and the pip command, when it is not installed.
        FileNotFoundError: when the package lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"face_backend='dlib' needs the model files of the {package} package "
            f"(PyPI: face-recognition-models): {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall face-recognition-models ({INSTALL_HINT})")
    return path


def rgb_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """``[B, 3, H, W]`` in ``[-1, 1]`` -> B contiguous ``[H, W, 3]`` uint8 RGB arrays (what dlib reads)."""
    pixels = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image) for image in pixels]


class _LazyModels(nn.Module):
    """Loads dlib models on first use; a copy or pickle leaves them out (some dlib models cannot be pickled)."""

    def __init__(self) -> None:
        super().__init__()
        self._models: Any = None

    def _load(self) -> Any:
        raise NotImplementedError

    def models(self) -> Any:
        if self._models is None:
            self._models = self._load()
        return self._models

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_models"] = None
        return state


class DlibDetector(_LazyModels):
    """dlib's face detector as a :class:`~lightning_cat.metrics.face_models.FaceDetector`.

    Boxes are dlib's rectangles as ``x1, y1, x2, y2`` with exclusive right/bottom edges (may reach
    outside the image); the confidence is dlib's detection score, an SVM (HOG) or MMOD (CNN) margin
    whose threshold 0 is dlib's default, not a probability.

    Args:
        model: ``hog`` (fast, frontal faces, at least ~80 px before upsampling) or ``cnn`` (more
            robust to pose, about 1 s per 512 px image on one CPU core).
        upsample: times the image is upsampled by 2 before detection (finds faces half as large
            each time; dlib's face_recognition default: 1).
        min_confidence: detections scoring below this margin are dropped (negative values let the
            HOG detector return weaker detections).

    Raises:
        ValueError: for an unknown ``model`` or a negative ``upsample``.
        ModuleNotFoundError: if dlib or face-recognition-models is not installed.
    """

    def __init__(self, model: DlibDetectorModel = "hog", upsample: int = 1, min_confidence: float = 0.0) -> None:
        check_arguments(type(self).__name__, DlibDetector.__init__, locals())
        if upsample < 0:
            raise ValueError(f"DlibDetector: upsample must be >= 0, got {upsample}")
        super().__init__()
        import_dlib()
        self.model = model
        self.upsample = int(upsample)
        self.min_confidence = float(min_confidence)
        self._cnn_file = dlib_model_file("mmod_human_face_detector.dat") if model == "cnn" else None

    def _load(self) -> Any:
        dlib = import_dlib()
        if self.model == "cnn":
            return dlib.cnn_face_detection_model_v1(str(self._cnn_file))
        return dlib.get_frontal_face_detector()

    def _detect(self, pixels: np.ndarray) -> torch.Tensor:
        if self.model == "cnn":
            found = self.models()(pixels, self.upsample)
            rects, scores = [d.rect for d in found], [d.confidence for d in found]
        else:
            rects, scores, _ = self.models().run(pixels, self.upsample, self.min_confidence)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float64)
        return detection_rows(boxes, np.array(scores, dtype=np.float64), min_confidence=self.min_confidence)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self._detect(pixels) for pixels in rgb_arrays(images)]


class DlibEmbedder(_LazyModels):
    """dlib's 128-d ResNet face descriptor as a :class:`~lightning_cat.metrics.face_models.FaceEmbedder`.

    For each box, dlib's 5-point landmark model locates the eyes and nose, ``dlib.get_face_chip``
    warps the face to an upright 150 px chip (padding 0.25) and the ResNet maps the chip to a
    128-d descriptor (not unit norm; dlib calls two faces the same person below Euclidean distance
    0.6). Works with boxes from any detector; dlib's landmark model is trained on dlib's detector boxes.

    Raises:
        ModuleNotFoundError: if dlib or face-recognition-models is not installed.
    """

    chip_size = 150
    chip_padding = 0.25

    def __init__(self) -> None:
        super().__init__()
        import_dlib()
        self._landmarks_file = dlib_model_file("shape_predictor_5_face_landmarks.dat")
        self._descriptor_file = dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")

    def _load(self) -> Any:
        dlib = import_dlib()
        return (
            dlib.shape_predictor(str(self._landmarks_file)),
            dlib.face_recognition_model_v1(str(self._descriptor_file)),
        )

    def face_chips(self, images: torch.Tensor, boxes: torch.Tensor) -> list[np.ndarray]:
        """The aligned ``[150, 150, 3]`` uint8 face chip of each image's box."""
        dlib = import_dlib()
        landmarks, _ = self.models()
        chips = []
        for pixels, box in zip(rgb_arrays(images), boxes, strict=True):
            x1, y1, x2, y2 = (round(float(v)) for v in box[:4])
            shape = landmarks(pixels, dlib.rectangle(x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)))
            chips.append(dlib.get_face_chip(pixels, shape, size=self.chip_size, padding=self.chip_padding))
        return chips

    @torch.no_grad()
    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        _, descriptor = self.models()
        vectors = descriptor.compute_face_descriptor(self.face_chips(images, boxes))
        return torch.tensor(np.array(vectors, dtype=np.float32).reshape(len(boxes), -1), device=images.device)
