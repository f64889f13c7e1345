"""BRISQUE no-reference quality (Mittal et al., IEEE TIP 2012) with the SVR model the ``brisque`` wheel ships.

The ``brisque`` package (0.2.0) ships a trained epsilon-SVR (``models/svm.txt``, libsvm text
format, RBF kernel) and its feature ranges (``models/normalize.pickle``), but its own code needs
OpenCV and libsvm and fails under numpy 2. Here the 36 features are computed with numpy/scipy/torch
following that package's definitions (so they match what the shipped model was fitted to), and the
SVR is evaluated directly from the model file; nothing of the package is imported.

Features, per scale (the image, then the image downscaled by 2 with Keys bicubic, a = -0.75, as
OpenCV's ``INTER_CUBIC``): grayscale (Rec. 709 luma weights) in ``[0, 1]``; MSCN coefficients
``(I - mu) / (sigma + 1/255)`` with a 7x7 Gaussian window (sigma 7/6, zero padding); an
asymmetric generalized Gaussian fit (moment matching) of the MSCN map (shape, variance) and of its
four neighbour products (horizontal, vertical, both diagonals: shape, mean, left and right
variances). Scores are roughly 0 (best) to 100 (worst); higher means lower quality.

Install the model files with ``pip install --no-deps brisque==0.2.0``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, signal, special

from lightning_cat.metrics.mean import RunningMean
from lightning_cat.pixels import to_uint8

__all__ = ["BRISQUE", "BRISQUEModel", "brisque_features", "brisque_model_dir", "load_brisque_model"]

_LUMA = np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray weights


def brisque_model_dir() -> Path:
    """Folder of the model files inside the installed ``brisque`` wheel (located without importing it)."""
    spec = importlib.util.find_spec("brisque")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "BRISQUE needs the model files of the brisque wheel: pip install --no-deps brisque==0.2.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class _PlainUnpickler(pickle.Unpickler):
    # normalize.pickle is a dict of float lists: refuse anything that would run code.
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"BRISQUE normalization file may hold only plain data, found {module}.{name}")


@dataclass(frozen=True)
class BRISQUEModel:
    """An epsilon-SVR with RBF kernel plus the feature ranges it was trained on."""

    support_vectors: np.ndarray  # [N, F]
    coefficients: np.ndarray  # [N]
    rho: float
    gamma: float
    feature_min: np.ndarray  # [F]
    feature_max: np.ndarray  # [F]

    def scale(self, features: np.ndarray) -> np.ndarray:
        """Map features to the [-1, 1] ranges of training."""
        return -1.0 + 2.0 * (features - self.feature_min) / (self.feature_max - self.feature_min)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores of ``[B, F]`` raw features: ``sum_i coef_i exp(-gamma |x - sv_i|^2) - rho``."""
        scaled = self.scale(np.atleast_2d(np.asarray(features, dtype=np.float64)))
        distances = ((scaled[:, None, :] - self.support_vectors[None]) ** 2).sum(-1)
        return np.exp(-self.gamma * distances) @ self.coefficients - self.rho


def _parse_libsvm_model(path: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    header, index = {}, 0
    while lines[index].strip() != "SV":
        key, _, value = lines[index].partition(" ")
        header[key] = value.strip()
        index += 1
    rows = [line.split() for line in lines[index + 1 :] if line.strip()]
    width = max(int(item.split(":")[0]) for row in rows for item in row[1:])
    vectors = np.zeros((len(rows), width))
    for r, row in enumerate(rows):
        for item in row[1:]:  # sparse "index:value", 1-based; absent entries are 0
            column, value = item.split(":")
            vectors[r, int(column) - 1] = float(value)
    coefficients = np.array([float(row[0]) for row in rows])
    return header, vectors, coefficients


@cache
def load_brisque_model(model_dir: str | os.PathLike | None = None) -> BRISQUEModel:
    """Read ``svm.txt`` and ``normalize.pickle`` (default: the brisque wheel's ``models`` folder).

    Raises:
        ModuleNotFoundError: when the wheel is not installed and no folder is given.
        FileNotFoundError: when a file is missing.
        ValueError: when the model is not an RBF epsilon-SVR.
    """
    folder = Path(model_dir) if model_dir is not None else brisque_model_dir()
    svm, normalize = folder / "svm.txt", folder / "normalize.pickle"
    for file in (svm, normalize):
        if not file.is_file():
            raise FileNotFoundError(f"BRISQUE model file '{file}' does not exist")
    header, vectors, coefficients = _parse_libsvm_model(svm)
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"BRISQUE model '{svm}' is not an RBF epsilon-SVR: {header}")
    if int(header["total_sv"]) != len(vectors):
        raise ValueError(f"BRISQUE model '{svm}' declares {header['total_sv']} support vectors, holds {len(vectors)}")
    ranges = _PlainUnpickler(io.BytesIO(normalize.read_bytes())).load()
    feature_min = np.array([float(v) for v in ranges["min_"]])
    feature_max = np.array([float(v) for v in ranges["max_"]])
    if len(feature_min) != vectors.shape[1]:
        vectors = np.pad(vectors, ((0, 0), (0, len(feature_min) - vectors.shape[1])))
    return BRISQUEModel(vectors, coefficients, float(header["rho"]), float(header["gamma"]), feature_min, feature_max)


def _gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    offsets = np.arange(size) - size // 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    return window / window.sum()


def _mscn(gray: np.ndarray) -> np.ndarray:
    window = _gaussian_window()
    mu = signal.convolve2d(gray, window, mode="same")
    sigma = np.sqrt(np.abs(mu**2 - signal.convolve2d(gray**2, window, mode="same")))
    return (gray - mu) / (sigma + 1.0 / 255.0)


def _aggd_shape_ratio(alpha: float) -> float:
    # Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), via log-gamma so small shapes do not overflow.
    return float(np.exp(2 * special.gammaln(2 / alpha) - special.gammaln(1 / alpha) - special.gammaln(3 / alpha)))


def _fit_aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalized Gaussian: (shape, mean, sigma_l, sigma_r)."""
    x = x.ravel()
    left, right = x[x < 0], x[x >= 0]
    sigma_l = np.sqrt(np.mean(left**2)) if left.size else 0.0
    sigma_r = np.sqrt(np.mean(right**2)) if right.size else 0.0
    gamma_hat = sigma_l / sigma_r if sigma_r > 0 else np.inf
    r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    low, high = 0.05, 20.0
    f_low, f_high = _aggd_shape_ratio(low) - r_norm, _aggd_shape_ratio(high) - r_norm
    if f_low >= 0:
        alpha = low
    elif f_high <= 0:
        alpha = high
    else:
        alpha = optimize.brentq(lambda a: _aggd_shape_ratio(a) - r_norm, low, high, xtol=1e-12)
    mean = (sigma_r - sigma_l) * np.exp(
        0.5 * (special.gammaln(1 / alpha) - special.gammaln(3 / alpha))
        + special.gammaln(2 / alpha)
        - special.gammaln(1 / alpha)
    )
    return float(alpha), float(mean), float(sigma_l), float(sigma_r)


def _scale_features(gray: np.ndarray) -> list[float]:
    mscn = _mscn(gray)
    alpha, _, sigma_l, sigma_r = _fit_aggd(mscn)
    features = [alpha, (sigma_l**2 + sigma_r**2) / 2]
    products = (
        mscn[:, :-1] * mscn[:, 1:],
        mscn[:-1, :] * mscn[1:, :],
        mscn[:-1, :-1] * mscn[1:, 1:],
        mscn[1:, :-1] * mscn[:-1, 1:],
    )
    for product in products:
        alpha, mean, sigma_l, sigma_r = _fit_aggd(product)
        features += [alpha, mean, sigma_l**2, sigma_r**2]
    return features


def _keys_weights(size_in: int, size_out: int, scale: float, a: float = -0.75) -> np.ndarray:
    """``[size_out, size_in]`` resampling matrix: Keys cubic, half-pixel centres, edge samples repeated."""
    source = (np.arange(size_out) + 0.5) / scale - 0.5
    base = np.floor(source).astype(int)
    weights = np.zeros((size_out, size_in))
    for offset in range(-1, 3):
        distance = np.abs(source - (base + offset))
        near = (a + 2) * distance**3 - (a + 3) * distance**2 + 1
        far = a * distance**3 - 5 * a * distance**2 + 8 * a * distance - 4 * a
        kernel = np.where(distance <= 1, near, np.where(distance < 2, far, 0.0))
        np.add.at(weights, (np.arange(size_out), np.clip(base + offset, 0, size_in - 1)), kernel)
    return weights


def downscale_half_bicubic(gray: np.ndarray) -> np.ndarray:
    """Halve a 2-D image as OpenCV's ``resize(fx=0.5, fy=0.5, INTER_CUBIC)`` does.

    Keys bicubic (a = -0.75), half-pixel centres, no antialiasing, edge pixels repeated; output
    sides are the halves rounded half to even (OpenCV's ``cvRound``).
    """
    height, width = gray.shape
    rows = _keys_weights(height, int(np.rint(height * 0.5)), 0.5)
    columns = _keys_weights(width, int(np.rint(width * 0.5)), 0.5)
    return rows @ gray @ columns.T


def brisque_features(rgb: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of one RGB image (``[H, W, 3]`` uint8, or float in ``[0, 1]``)."""
    image = np.asarray(rgb)
    image = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    gray = image @ _LUMA if image.ndim == 3 else image
    return np.array(_scale_features(gray) + _scale_features(downscale_half_bicubic(gray)))


class BRISQUE(RunningMean):
    """Mean BRISQUE score of images (lower: better quality), shipped SVR model, features computed here.

    Args:
        model_dir: folder with ``svm.txt`` and ``normalize.pickle`` (default: the brisque wheel's).
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = False

    def __init__(self, model_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = load_brisque_model(model_dir)

    def scores(self, images: torch.Tensor) -> np.ndarray:
        """Per-image scores of ``[B, 3, H, W]`` images in ``[-1, 1]`` (rounded to 8 bits first)."""
        pixels = to_uint8(images.cpu())
        features = np.stack([brisque_features(p.permute(1, 2, 0).numpy()) for p in pixels])
        return self.model.predict(features)

    def update(self, images: torch.Tensor) -> None:
        """Add images (``[B, 3, H, W]`` in ``[-1, 1]``)."""
        self.add(torch.from_numpy(self.scores(images)))
