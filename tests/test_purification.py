"""Classical purifiers: change the image, keep shape and range, match their references."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from lightning_cat.images import ImageTransform, load_image, pil_to_tensor, tensor_to_pil
from lightning_cat.pixels import to_uint8
from lightning_cat.purification import PURIFIERS, GaussianBlur, JPEGCompression, ResizeDownUp, TVDenoise, build_purifier


@pytest.fixture(scope="module")
def batch(photos_dir):
    transform = ImageTransform(resolution=64)
    return torch.stack([transform(load_image(photos_dir / f"{n}.png")) for n in ("astronaut", "coffee")])


CLASSICAL = ("blur", "jpeg", "resize", "tv")  # model-based ones: tests/test_purification_models.py


def test_registry_holds_classical_and_model_based_purifiers():
    assert set(PURIFIERS) == {*CLASSICAL, "noisy_upscale", "latent_diffpure", "latent_gridpure", "impress"}


@pytest.mark.parametrize("name", CLASSICAL)
def test_purifier_changes_image_keeps_shape_and_range(name, batch):
    purifier = build_purifier(name)
    out = purifier(batch)
    assert out.shape == batch.shape and out.min() >= -1 and out.max() <= 1
    assert (out - batch).abs().mean() > 1 / 255
    assert torch.equal(out, purifier(batch))  # deterministic
    assert torch.equal(to_uint8(out).float() / 127.5 - 1, out)  # on the 8-bit grid
    assert purifier.params()["name"] == name


def test_jpeg_and_blur_equal_pil(batch):
    image = tensor_to_pil(batch[0])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=40)
    reference = pil_to_tensor(Image.open(io.BytesIO(buffer.getvalue())))
    assert torch.equal(JPEGCompression(quality=40)(batch[:1])[0], reference)
    blurred = pil_to_tensor(image.filter(ImageFilter.GaussianBlur(2)))
    assert torch.equal(GaussianBlur(radius=2)(batch[:1])[0], blurred)


def test_tv_denoise_equals_skimage(batch):
    from skimage.restoration import denoise_tv_chambolle

    unit = ((batch[0] + 1) / 2).permute(1, 2, 0).double().numpy()
    reference = denoise_tv_chambolle(unit, weight=0.1, eps=0.0, max_num_iter=50, channel_axis=-1)
    ours = TVDenoise(weight=0.1, num_iter=50).purify(batch[:1].double())[0]
    ours = ((ours + 1) / 2).permute(1, 2, 0).numpy()
    assert np.abs(ours - reference).max() < 1e-6


def test_resize_down_up_keeps_size(batch):
    out = ResizeDownUp(factor=4)(batch)
    assert out.shape == batch.shape


@pytest.mark.parametrize(
    ("cls", "options", "match"),
    [
        (JPEGCompression, {"quality": 0}, "quality"),
        (GaussianBlur, {"radius": 0}, "radius"),
        (ResizeDownUp, {"factor": 1}, "factor"),
        (ResizeDownUp, {"interpolation": "cubic"}, "interpolation"),
        (TVDenoise, {"weight": -1}, "weight"),
    ],
)
def test_bad_options(cls, options, match):
    with pytest.raises(ValueError, match=match):
        cls(**options)
    with pytest.raises(ValueError, match="unknown purifier 'median'"):
        build_purifier("median")
