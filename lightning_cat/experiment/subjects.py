"""A subject's clean images in the run directory: copied from folders or made from scikit-image photos."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning_cat.experiment.config import SKIMAGE_PREFIX
from lightning_cat.experiment.store import file_fingerprint, fingerprint
from lightning_cat.images import list_images

__all__ = ["materialize_subject", "subject_fingerprint"]


def materialize_subject(sources: list[str], size: int, folder: Path, name: str = "images") -> dict[str, Any]:
    """Write the subject's images into ``folder/name`` (``skimage:<name>`` resized to ``size``)."""
    from PIL import Image

    images = folder / name
    images.mkdir()
    for source in sources:
        if source.startswith(SKIMAGE_PREFIX):
            from skimage import data

            name = source[len(SKIMAGE_PREFIX) :]
            if not hasattr(data, name):
                raise ValueError(f"scikit-image has no sample image {name!r}")
            image = Image.fromarray(getattr(data, name)()).convert("RGB")
            scale = size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            image.save(images / f"{name}.png")
        else:
            for path in list_images(source, what="subject image folder"):
                shutil.copyfile(path, images / path.name)
    list_images(images, what="subject image folder")  # duplicate stems across sources fail here
    return {"images": len(list(images.iterdir()))}


def subject_fingerprint(sources: list[str], size: int) -> str:
    """A hash of the subject's sources: the bytes of every image of its folders, the photo names."""
    parts = []
    for source in sources:
        if source.startswith(SKIMAGE_PREFIX):
            parts.append(source)
        elif not Path(source).is_dir():
            parts.append({"missing": source})  # only when planning without the data
        else:
            parts.append({p.name: file_fingerprint(p) for p in list_images(source, what="subject image folder")})
    return fingerprint({"sources": parts, "size": size})
