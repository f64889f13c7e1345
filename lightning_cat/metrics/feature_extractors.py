"""Image feature extractors for FID: Inception-v3 from a local file, or a small random network.

Both take float images ``[B, 3, H, W]`` in ``[-1, 1]`` and return ``[B, num_features]``.

* :func:`load_inception`: torch-fidelity's FID Inception-v3 (the network behind every published
  FID), its weights read from a local ``pt_inception-2015-12-05-6726825d.pth``; never downloaded.
* :class:`RandomFeatureExtractor`: a seeded random conv net, for tests and tiny configs. Its FID
  is a distance between feature distributions of a random projection, not a published FID.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lightning_cat.options import check_arguments
from lightning_cat.pixels import to_uint8

__all__ = ["InceptionFeatures", "InceptionLayer", "RandomFeatureExtractor", "load_inception", "module_identity"]

#: The feature layers of the FID Inception-v3 (2048: the pool features every published FID uses).
InceptionLayer = Literal[64, 192, 768, 2048]


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception-v3 on library-format images (rounded to 8 bits first).

    Args:
        inception: torchmetrics' ``NoTrainInceptionV3`` (expects uint8 input).
        num_features: which feature layer it returns.
    """

    def __init__(self, inception: nn.Module, num_features: int) -> None:
        super().__init__()
        self.inception = inception
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(to_uint8(images)).reshape(images.shape[0], -1)


def load_inception(weights: str | os.PathLike | None, num_features: InceptionLayer = 2048) -> InceptionFeatures:
    """FID Inception-v3 with weights from ``weights`` (torch-fidelity's file).

    Raises:
        ValueError: if ``weights`` is ``None`` or ``num_features`` is not a feature layer.
        FileNotFoundError: if the file does not exist.
        ModuleNotFoundError: if torch-fidelity is not installed.
    """
    check_arguments("load_inception", load_inception, {"num_features": num_features})
    if weights is None:
        raise ValueError(
            "FID with Inception needs local weights: set fid_weights to torch-fidelity's "
            "pt_inception-2015-12-05-6726825d.pth (nothing is downloaded), or fid_extractor='random' for tests"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"fid_weights '{path}' does not exist")
    # torch-fidelity unpickles the file without weights_only; check first that it is plain tensors.
    torch.load(path, map_location="cpu", weights_only=True)
    from torchmetrics.image.fid import NoTrainInceptionV3

    inception = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=[str(num_features)], feature_extractor_weights_path=str(path)
    )
    return InceptionFeatures(inception, num_features)


class RandomFeatureExtractor(nn.Module):
    """A seeded random conv net (identical weights for the same arguments), for tests only.

    Args:
        num_features: output width.
        seed: weight seed.
        input_size: images are resized to this square side first.
    """

    def __init__(self, num_features: int = 64, seed: int = 0, input_size: int = 64) -> None:
        super().__init__()
        self.num_features = num_features
        self.input_size = input_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, num_features, 3, stride=2, padding=1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            for layer in self.net:
                if isinstance(layer, nn.Conv2d):  # variance-preserving, so features do not collapse
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = nn.functional.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        return self.net(images)


def module_identity(module: nn.Module) -> str:
    """A digest of a module's class and weights (names, dtypes, shapes, bytes): equal iff same extractor."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
