"""LPIPS with local backbone weights (the ``lpips`` package downloads its backbone otherwise).

The ``lpips`` wheel ships the calibrated linear heads; the ImageNet backbone (AlexNet, VGG16 or
SqueezeNet 1.1, torchvision format) must come from a local file. ``random_backbone=True`` builds
a random backbone for tests only: its distances are not perceptual.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch

from lightning_cat.options import choices

__all__ = ["LPIPS_NETS", "LPIPSNet", "load_lpips"]

#: LPIPS backbone families.
LPIPSNet = Literal["alex", "vgg", "squeeze"]
LPIPS_NETS = choices(LPIPSNet)


def load_lpips(
    net: LPIPSNet = "alex",
    backbone_weights: str | os.PathLike | None = None,
    *,
    random_backbone: bool = False,
) -> torch.nn.Module:
    """A frozen ``lpips.LPIPS`` (v0.1, inputs in ``[-1, 1]``) whose backbone is read from disk.

    Args:
        net: backbone family.
        backbone_weights: torchvision state dict of the backbone (e.g. ``alexnet-owt-7be5be79.pth``).
        random_backbone: use a random backbone instead (tests only).

    Raises:
        ValueError: for an unknown ``net`` or when neither weights nor ``random_backbone`` are given.
        FileNotFoundError: if ``backbone_weights`` does not exist.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {list(LPIPS_NETS)}")
    if backbone_weights is None and not random_backbone:
        raise ValueError(
            "LPIPS needs its ImageNet backbone from a local file: set lpips_backbone_weights to a torchvision "
            f"{net} state dict (nothing is downloaded), or random_backbone=True in tests"
        )
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` flag
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.is_file():
            raise FileNotFoundError(f"lpips_backbone_weights '{path}' does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        _load_backbone(model.net, state, path)
    return model.eval().requires_grad_(False)


def _load_backbone(backbone: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    # lpips splits torchvision's `features` Sequential into slices that keep the original indices
    # as module names, so `features.<i>.<param>` lives at `slice<k>.<i>.<param>`.
    targets = {}
    for name, _ in backbone.named_parameters():
        slice_name, index, param = name.split(".", 2)
        targets[f"features.{index}.{param}"] = name
    missing = sorted(set(targets) - set(state))
    if missing:
        raise ValueError(f"lpips_backbone_weights '{path}' lacks backbone entries {missing[:4]}...")
    backbone.load_state_dict({targets[key]: state[key] for key in targets}, strict=True)
