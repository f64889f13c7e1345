"""Image reading, conversions and the shared transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_cat.images import ImageInputError, ImageTransform, list_images, load_image, save_png
from lightning_cat.pixels import to_uint8


def test_conversions_are_documented_and_correct(odd_images):
    rgba = np.asarray(load_image(odd_images["rgba"]))
    original = np.asarray(Image.open(odd_images["rgba"]))
    assert (rgba[:, :48] == 255).all()  # transparent half composited onto white
    assert (rgba[:, 48:] == original[:, 48:, :3]).all()

    gray = np.asarray(load_image(odd_images["gray"]))
    assert gray.shape[2] == 3 and (gray[..., 0] == gray[..., 1]).all()

    gray16 = np.asarray(load_image(odd_images["gray16"]))
    assert (gray16[..., 0] == gray[..., 0]).all()  # v*257 scaled back to v, not saturated

    for case in ("palette", "cmyk", "wide"):
        assert load_image(odd_images[case]).mode == "RGB"


def test_corrupt_and_missing_files_are_named(odd_images, tmp_path):
    with pytest.raises(ImageInputError, match="corrupt.png"):
        load_image(odd_images["corrupt"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_list_images(tmp_path, odd_images):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(odd_images["gray"].read_bytes())
    with pytest.raises(ImageInputError, match="holds no image"):
        list_images(tmp_path)
    (tmp_path / "b.png").write_bytes(odd_images["gray"].read_bytes())
    (tmp_path / "a.jpg").write_bytes(odd_images["cmyk"].read_bytes())
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png"]
    (tmp_path / "a.png").write_bytes(odd_images["gray"].read_bytes())
    with pytest.raises(ImageInputError, match="same stem"):
        list_images(tmp_path)


def test_transform_center_crop_is_on_the_8bit_grid(odd_images):
    transform = ImageTransform(resolution=64)
    image = transform(load_image(odd_images["wide"]))
    assert image.shape == (3, 64, 64) and image.min() >= -1 and image.max() <= 1
    assert torch.equal(to_uint8(image).float() / 127.5 - 1, image)
    assert transform.to_dict() == {
        "resolution": 64,
        "crop": "center",
        "hflip": False,
        "interpolation": "bicubic",
        "small_images": "error",
    }


def test_transform_random_crop_and_flip_are_seeded(odd_images):
    transform = ImageTransform(resolution=64, crop="random", hflip=True)
    source = load_image(odd_images["wide"])
    a = transform(source, torch.Generator().manual_seed(0))
    b = transform(source, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not transform.is_deterministic


def test_small_images_error_or_upscale(odd_images):
    small = load_image(odd_images["small"])
    with pytest.raises(ImageInputError, match="smaller than resolution 64.*small_images='upscale'"):
        ImageTransform(resolution=64).check_size(small, odd_images["small"])
    assert ImageTransform(resolution=64, small_images="upscale")(small).shape == (3, 64, 64)


@pytest.mark.parametrize(
    ("option", "value"), [("crop", "diagonal"), ("interpolation", "cubic"), ("small_images", "pad"), ("resolution", 0)]
)
def test_transform_rejects_bad_options(option, value):
    with pytest.raises(ValueError, match=option):
        ImageTransform(**{option: value})


def test_save_png_round_trips_exactly(tmp_path):
    image = torch.randint(0, 256, (3, 16, 16)).float() / 127.5 - 1
    save_png(image, tmp_path / "x.png")
    loaded = np.array(Image.open(tmp_path / "x.png"))
    assert (torch.from_numpy(loaded).permute(2, 0, 1) == to_uint8(image)).all()
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary file left behind


def test_atomic_writes_get_the_umask_mode(tmp_path):
    """Written files and staged folders are not left private (mkstemp/mkdtemp's 0600/0700)."""
    import os

    from lightning_cat.atomic import atomic_write_json, staging_dir

    previous = os.umask(0o022)
    try:
        save_png(torch.zeros(3, 8, 8), tmp_path / "image.png")
        atomic_write_json(tmp_path / "record.json", {"a": 1})
        folder = staging_dir(tmp_path / "target")
    finally:
        os.umask(previous)
    assert (tmp_path / "image.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755 and folder.parent == tmp_path
