"""Datamodules: dict batches in [-1, 1], pairing by stem, DreamBooth prior, clear input errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from lightning_cat.datamodules import DreamBoothDataModule, ImageFolderDataModule, PairedImageDataModule
from lightning_cat.images import ImageInputError
from lightning_cat.purification import JPEGCompression


def test_folder_batches(photos_dir):
    dm = ImageFolderDataModule(
        str(photos_dir), prompt="a photo of sks thing", resolution=64, batch_size=2, shuffle=False
    )
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "path", "index", "prompt"}
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["prompt"] == ["a photo of sks thing"] * 2
    assert batch["path"][0].endswith("astronaut.png") and batch["index"].tolist() == [0, 1]
    assert len(dm.predict_dataloader()) == 3  # 5 images, batch 2


def test_folder_with_purifier_differs_from_plain(photos_dir):
    plain = ImageFolderDataModule(str(photos_dir), resolution=64).dataset[0]["image"]
    purified = ImageFolderDataModule(str(photos_dir), resolution=64, purifier=JPEGCompression(20)).dataset[0]["image"]
    assert purified.shape == plain.shape and (purified - plain).abs().mean() > 1 / 255


def test_random_augmentation_changes_views(photos_dir):
    dm = ImageFolderDataModule(str(photos_dir), resolution=64, crop="random", hflip=True)
    torch.manual_seed(0)
    views = [dm.dataset[1]["image"] for _ in range(6)]  # chelsea: not square, so crops differ
    assert any(not torch.equal(views[0], v) for v in views[1:])


@pytest.mark.parametrize("case", ["corrupt", "small"])
def test_bad_image_named_at_construction(odd_images, image_folder, case):
    folder = image_folder(odd_images["gray"], odd_images[case])
    with pytest.raises(ImageInputError, match=odd_images[case].name):
        ImageFolderDataModule(str(folder), resolution=64)


def test_odd_modes_load(odd_images, image_folder):
    folder = image_folder(*(odd_images[c] for c in ("rgba", "gray", "gray16", "palette", "cmyk", "wide")))
    dm = ImageFolderDataModule(str(folder), resolution=64, batch_size=6)
    assert next(iter(dm.test_dataloader()))["image"].shape == (6, 3, 64, 64)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder '.*missing' does not exist"):
        ImageFolderDataModule(str(tmp_path / "missing"))
    with pytest.raises(ImageInputError, match="holds no image"):
        ImageFolderDataModule(str(tmp_path))


def test_bad_loader_options(photos_dir):
    with pytest.raises(ValueError, match="batch_size"):
        ImageFolderDataModule(str(photos_dir), resolution=64, batch_size=0)
    with pytest.raises(ValueError, match="crop='diagonal' is not one of"):
        ImageFolderDataModule(str(photos_dir), resolution=64, crop="diagonal")


@pytest.fixture
def pair_dirs(tmp_path, photos_dir):
    clean, protected = tmp_path / "clean", tmp_path / "protected"
    shutil.copytree(photos_dir, clean)
    protected.mkdir()
    for path in sorted(clean.iterdir())[:3]:  # protected at resolution 64, as a protection writes them
        image = Image.open(path).convert("RGB")
        scale = 64 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (image.width - 64) // 2, (image.height - 64) // 2
        image.crop((left, top, left + 64, top + 64)).save(protected / path.name)
    return clean, protected


def test_pairs_match_by_stem(pair_dirs):
    clean, protected = pair_dirs
    for extra in sorted(clean.iterdir())[3:]:
        extra.unlink()
    dm = PairedImageDataModule(str(clean), str(protected), resolution=64, batch_size=3)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == batch["clean"].shape == (3, 3, 64, 64)
    for path, clean_path in zip(batch["path"], batch["clean_path"], strict=True):
        assert path.split("/")[-1] == clean_path.split("/")[-1]
    assert torch.equal(batch["image"], batch["clean"])  # same preprocessing, same pixels


def test_unmatched_pairs_are_listed(pair_dirs):
    clean, protected = pair_dirs
    (protected / "chelsea.png").rename(protected / "kitten.png")
    with pytest.raises(
        ImageInputError, match=r"only clean: \['chelsea', 'coffee', 'rocket'\]; only protected: \['kitten'\]"
    ):
        PairedImageDataModule(str(clean), str(protected), resolution=64)


def test_manifest_resolution_mismatch(pair_dirs):
    clean, protected = pair_dirs
    (protected / "manifest.json").write_text(json.dumps({"resolution": 512}))
    with pytest.raises(ImageInputError, match="resolution 512"):
        PairedImageDataModule(str(clean), str(protected), resolution=64)


def test_paired_needs_deterministic_transform(pair_dirs):
    clean, protected = pair_dirs
    with pytest.raises(ImageInputError, match="deterministic"):
        PairedImageDataModule(str(clean), str(protected), resolution=64, hflip=True)


def _attach(dm, module):
    class _Trainer:
        lightning_module = module

    dm.trainer = _Trainer()


def test_dreambooth_prior_counts_missing_images_and_batches(photos_dir, tmp_path):
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    Image.new("RGB", (64, 64)).save(class_dir / "class_00000.png")
    dm = DreamBoothDataModule(
        str(photos_dir), class_root=str(class_dir), num_class_images=3, resolution=64, batch_size=2, shuffle=False
    )
    assert dm.missing_class_images == 2
    for i in (1, 2):  # what the model's prepare_data writes (DreamBoothModule: see test_dreambooth.py)
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(class_dir / f"class_{i:05d}.png")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["class_image"].shape == (2, 3, 64, 64) and batch["class_prompt"] == ["a photo of person"] * 2
    assert batch["prompt"] == ["a photo of sks person"] * 2
    assert len(dm.dataset) == 5  # max(5 instance, 3 class)

    again = DreamBoothDataModule(str(photos_dir), class_root=str(class_dir), num_class_images=3, resolution=64)
    assert again.missing_class_images == 0 and again.class_images is not None


def test_dreambooth_missing_class_images_without_generator(photos_dir, tmp_path):
    dm = DreamBoothDataModule(str(photos_dir), class_root=str(tmp_path / "class"), num_class_images=4, resolution=64)
    _attach(dm, object())
    with pytest.raises(RuntimeError, match="holds 0 of num_class_images=4"):
        dm.setup("fit")


def test_dreambooth_without_prior(photos_dir):
    dm = DreamBoothDataModule(str(photos_dir), resolution=64, batch_size=5)
    batch = next(iter(dm.train_dataloader()))
    assert "class_image" not in batch and not dm.with_prior
