"""Reading, preprocessing and writing images: the one place pixels enter and leave the library.

Every image goes through :func:`load_image` (validation and documented mode conversions) and one
:class:`ImageTransform` (resize, crop, flip), so clean, protected and purified images of the same
source are preprocessed identically. Tensors are float ``[3, H, W]`` in ``[-1, 1]``.

Mode conversions (documented, not errors):

* EXIF orientation is applied.
* Grayscale (``L``, ``1``) and palette (``P``) images are converted to RGB.
* Alpha (``RGBA``, ``LA``, ``PA``) is composited onto a white background.
* 16-bit and 32-bit integer images (``I;16``, ``I``) are scaled to 8 bits (``v / 257``),
  float images (``F``) are assumed to lie in ``[0, 1]`` when their maximum is at most 1,
  otherwise in ``[0, 255]``.
* ``CMYK`` and ``YCbCr`` go through PIL's RGB conversion.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lightning_cat.atomic import atomic_write_bytes
from lightning_cat.options import check_arguments
from lightning_cat.pixels import from_levels, to_uint8

__all__ = [
    "IMAGE_EXTENSIONS",
    "Crop",
    "Interpolation",
    "SmallImages",
    "ImageInputError",
    "ImageTransform",
    "list_images",
    "load_image",
    "load_image_bytes",
    "pil_to_tensor",
    "save_png",
    "tensor_to_pil",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

#: ``center`` (deterministic) or ``random`` crops.
Crop = Literal["center", "random"]
#: PIL resampling filter of the resize.
Interpolation = Literal["bicubic", "bilinear", "lanczos", "nearest"]
#: What to do with an image smaller than the resolution: refuse it, or upscale it.
SmallImages = Literal["error", "upscale"]
_PIL_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


#: What PIL's decoders raise on a damaged file (a truncated PNG chunk surfaces as ``struct.error``).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class ImageInputError(ValueError):
    """A user-supplied image or image folder cannot be used; the message names it."""


def list_images(folder: str | os.PathLike, *, what: str = "image folder", allow_empty: bool = False) -> list[Path]:
    """Return the image files of ``folder`` sorted by name (hidden files and non-images skipped).

    Raises:
        FileNotFoundError: if ``folder`` does not exist or is not a directory.
        ImageInputError: if it holds no image file (unless ``allow_empty``), or two with one stem.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        kind = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"{what} '{root}' {kind}")
    files = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files and not allow_empty:
        raise ImageInputError(f"{what} '{root}' holds no image (looked for {', '.join(IMAGE_EXTENSIONS)})")
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ImageInputError(
            f"{what} '{root}' has several images with the same stem {duplicates}; stems name "
            "images (outputs and clean/protected pairs are matched by stem), so keep one per stem"
        )
    return files


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "I" and array.max(initial=0) <= 255:
            scaled = array
        else:
            scaled = array / 257.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        gray = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode(source: str | os.PathLike | io.BytesIO, name: str) -> Image.Image:
    """Fully decode ``source`` (every pixel, not only the header) to 8-bit RGB; ``name`` for errors."""
    try:
        with Image.open(source) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = _to_rgb(image)
    except _DECODE_ERRORS as error:
        reason = str(error) or type(error).__name__
        raise ImageInputError(f"cannot decode image {name} (truncated, empty or not an image?): {reason}") from error
    if image.width < 1 or image.height < 1:
        raise ImageInputError(f"image {name} is empty ({image.width}x{image.height})")
    return image


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path`` as an 8-bit RGB PIL image (see the module docstring for conversions).

    Every reader of image files goes through here (or :func:`load_image_bytes`), so a truncated or
    empty file fails as the same :class:`ImageInputError` naming it, wherever it is read.

    Raises:
        FileNotFoundError: if the file does not exist.
        ImageInputError: if it cannot be decoded, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file '{path}' does not exist")
    return _decode(path, f"'{path}'")


def load_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode encoded image ``data`` (PNG, JPEG, ...) like :func:`load_image`; ``name`` says where it came from.

    Raises:
        ImageInputError: if it cannot be decoded or is empty, naming ``name``.
    """
    return _decode(io.BytesIO(data), name)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float ``[3, H, W]`` in ``[-1, 1]`` (exactly ``v / 127.5 - 1``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return from_levels(torch.from_numpy(array.copy()).permute(2, 0, 1))


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float ``[3, H, W]`` in ``[-1, 1]`` -> 8-bit RGB PIL image (rounded, not truncated)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}")
    return Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy(), mode="RGB")


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resolution``, crop a square, optionally flip.

    The same instance (or one built from :meth:`to_dict`) must preprocess clean and protected
    images so pixel budgets compare like with like. Resizing happens in PIL on 8-bit data, so a
    center-cropped clean image lies exactly on the 8-bit grid.

    Args:
        resolution: side of the square output in pixels.
        crop: ``center`` (deterministic) or ``random`` (augmentation).
        hflip: flip horizontally with probability 0.5 (augmentation).
        interpolation: PIL resampling filter for the resize.
        small_images: what to do with an image whose shorter side is below ``resolution``:
            ``error`` (default) or ``upscale``.
    """

    resolution: int = 512
    crop: Crop = "center"
    hflip: bool = False
    interpolation: Interpolation = "bicubic"
    small_images: SmallImages = "error"

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise ValueError(f"ImageTransform: resolution must be an int >= 8, got {self.resolution!r}")
        check_arguments("ImageTransform", ImageTransform, asdict(self))

    @property
    def is_deterministic(self) -> bool:
        """True when the transform has no randomness (no random crop, no flip)."""
        return self.crop == "center" and not self.hflip

    def check_size(self, image: Image.Image, path: str | os.PathLike | None = None) -> None:
        """Raise :class:`ImageInputError` if ``image`` is smaller than the resolution and not allowed."""
        if self.small_images == "error" and min(image.size) < self.resolution:
            where = f"image '{path}'" if path is not None else "image"
            raise ImageInputError(
                f"{where} is {image.width}x{image.height}, smaller than resolution "
                f"{self.resolution}; use a lower resolution or small_images='upscale'"
            )

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize an 8-bit PIL image so its shorter side equals ``resolution``."""
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        return image if size == image.size else image.resize(size, _PIL_INTERPOLATION[self.interpolation])

    def crop_tensor(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Crop a ``[3, h, w]`` tensor to ``resolution`` square (center, or random from ``generator``)."""
        height, width = image.shape[-2:]
        if self.crop == "center":
            top, left = (height - self.resolution) // 2, (width - self.resolution) // 2
        else:
            top = int(torch.randint(0, height - self.resolution + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - self.resolution + 1, (1,), generator=generator))
        return image[..., top : top + self.resolution, left : left + self.resolution]

    def flip(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flip horizontally with probability 0.5 when ``hflip`` is on."""
        if self.hflip and bool(torch.rand((), generator=generator) < 0.5):
            return image.flip(-1)
        return image

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """PIL image -> float tensor ``[3, resolution, resolution]`` in ``[-1, 1]``."""
        self.check_size(image)
        return self.flip(self.crop_tensor(pil_to_tensor(self.resize(image)), generator), generator)

    def to_dict(self) -> dict[str, Any]:
        """The parameters to record in manifests (and to rebuild the transform from)."""
        return asdict(self)


def save_png(image: torch.Tensor | Image.Image, path: str | os.PathLike) -> None:
    """Atomically save a ``[3, H, W]`` tensor in ``[-1, 1]`` (or a PIL image) as an 8-bit PNG."""
    pil = image if isinstance(image, Image.Image) else tensor_to_pil(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
