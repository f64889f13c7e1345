"""Image sets on disk: a folder of PNGs plus ``manifest.json`` (protected or purified sets).

The writer of a set (protection, purification) calls :func:`prepare_output_dir` before any
expensive work, saves each image with :func:`save_png` and measures it with
:func:`measure_saved_image` against its identically preprocessed clean source, then writes the
manifest last with :func:`write_manifest`, so a folder with a manifest is a finished set.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightning_cat.atomic import atomic_write_json
from lightning_cat.images import IMAGE_EXTENSIONS, ImageInputError
from lightning_cat.pixels import to_uint8

__all__ = [
    "MANIFEST",
    "IDENTITY_KEYS",
    "measure_saved_image",
    "prepare_output_dir",
    "read_manifest",
    "write_manifest",
]

MANIFEST = "manifest.json"
#: Manifest entries that identify a set: two runs agreeing on all of them produce the same set.
IDENTITY_KEYS = ("method", "params", "eps_255", "resolution", "preprocessing", "seed", "model")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` when it has none.

    Raises:
        ImageInputError: if the manifest is not valid JSON (naming the file).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ImageInputError(f"manifest '{path}' is not valid JSON: {error}") from error


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    # JSON round trip so tuples/lists and int/float spellings compare as they are stored.
    return json.loads(json.dumps({key: manifest.get(key) for key in IDENTITY_KEYS}))


def prepare_output_dir(output_dir: str | os.PathLike, identity: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Create ``output_dir`` for a set, refusing to mix it with a different one.

    A folder that is empty, missing, or holds a set with the same identity (see
    :data:`IDENTITY_KEYS`) is accepted. A folder holding a different set, or images without a
    manifest, raises unless ``overwrite`` (then its images and manifest are removed).

    Raises:
        FileExistsError: naming the folder and the entries that differ.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"output_dir '{folder}' is a file")
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS] if folder.is_dir() else []
    existing = read_manifest(folder) if folder.is_dir() else None
    conflict = None
    if existing is not None:
        ours, theirs = _identity(identity), _identity(existing)
        differing = [key for key in IDENTITY_KEYS if ours[key] != theirs[key]]
        if differing:
            conflict = f"holds a different set (differs in {differing})"
    elif images:
        conflict = f"holds {len(images)} images but no {MANIFEST}"
    if conflict and not overwrite:
        raise FileExistsError(f"output_dir '{folder}' {conflict}; choose another folder or set overwrite=True")
    if conflict:
        for path in images:
            path.unlink()
        (folder / MANIFEST).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def measure_saved_image(path: str | os.PathLike, clean: torch.Tensor) -> dict[str, float]:
    """L_inf and L2 (in /255) and PSNR (dB) of a saved 8-bit image against its clean ``[3, H, W]`` tensor.

    Both are computed on integers from the file, in float, so nothing wraps around.
    """
    saved = torch.from_numpy(np.array(Image.open(path).convert("RGB"), dtype=np.int64)).permute(2, 0, 1)
    reference = to_uint8(clean).to(torch.int64).cpu()
    if saved.shape != reference.shape:
        raise ValueError(f"saved image '{path}' is {tuple(saved.shape)}, clean reference {tuple(reference.shape)}")
    difference = (saved - reference).to(torch.float64)
    mse = difference.pow(2).mean().item()
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
    return {"linf_255": int(difference.abs().max().item()), "l2_255": difference.norm().item(), "psnr": psnr}


def write_manifest(output_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Atomically write ``manifest.json`` (call it after every image of the set is saved)."""
    from lightning_cat import __version__

    path = Path(output_dir) / MANIFEST
    missing = [key for key in IDENTITY_KEYS + ("files",) if key not in manifest]
    if missing:
        raise ValueError(f"manifest for '{output_dir}' lacks {missing}")
    absent = [name for name in manifest["files"] if not (Path(output_dir) / f"{name}.png").is_file()]
    if absent:
        raise FileNotFoundError(f"manifest for '{output_dir}' lists images that were not written: {absent}")
    record = {**manifest, "lightning_cat_version": __version__}
    # JSON cannot hold inf (a PSNR of an unchanged image); store it as null.
    for entry in record["files"].values():
        if isinstance(entry.get("psnr"), float) and math.isinf(entry["psnr"]):
            entry["psnr"] = None
    atomic_write_json(path, record)
    return path
