"""HFImageDataModule: a ``datasets`` source gives the tensors and stems of the same images as a folder."""

from __future__ import annotations

import pytest
import torch

from lightning_cat.datamodules import HFImageDataModule, ImageFolderDataModule, PairedImageDataModule
from lightning_cat.images import ImageInputError

datasets = pytest.importorskip("datasets")


def _saved_dataset(folder, files, path, with_file_name=True, split=None):
    columns = {"image": [str(f) for f in files]}
    if with_file_name:
        columns["file_name"] = [f.name for f in files]
    table = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    if split is not None:
        table = datasets.DatasetDict({split: table})
    table.save_to_disk(str(path))
    return path


@pytest.fixture
def saved(photos_dir, tmp_path):
    return _saved_dataset(photos_dir, sorted(photos_dir.glob("*.png")), tmp_path / "saved")


def _all(dm):
    items = [dm.dataset[i] for i in range(len(dm.dataset))]
    return torch.stack([item["image"] for item in items]), [item["path"] for item in items]


def test_saved_dataset_equals_the_folder(photos_dir, saved):
    folder_images, folder_paths = _all(ImageFolderDataModule(str(photos_dir), resolution=64))
    dm = HFImageDataModule(str(saved), resolution=64, prompt="a photo of sks person", batch_size=2, shuffle=False)
    images, paths = _all(dm)
    assert torch.equal(images, folder_images)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [p.rsplit("/", 1)[-1] for p in folder_paths]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "path", "index", "prompt"} and batch["prompt"] == ["a photo of sks person"] * 2


def test_image_folder_and_random_crops_use_the_folder_preprocessing(photos_dir):
    folder = ImageFolderDataModule(str(photos_dir), resolution=64, crop="random", hflip=True)
    dm = HFImageDataModule(str(photos_dir), split="train", resolution=64, crop="random", hflip=True)
    assert [p.rsplit("/", 1)[-1] for p in _all(dm)[1]] == [f.name for f in folder.dataset.files]
    torch.manual_seed(3)
    expected = [folder.dataset[1]["image"] for _ in range(4)]
    torch.manual_seed(3)
    assert all(torch.equal(a, dm.dataset[1]["image"]) for a in expected)


def test_stems_from_the_row_index_and_a_dataset_dict(photos_dir, tmp_path):
    files = sorted(photos_dir.glob("*.png"))[:2]
    table = datasets.Dataset.from_dict({"picture": [f.read_bytes() for f in files]})
    table = table.cast_column("picture", datasets.Image())
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "dict"))
    dm = HFImageDataModule(str(tmp_path / "dict"), split="test", image_column="picture", resolution=64)
    assert [p.rsplit("/", 1)[-1] for p in _all(dm)[1]] == ["00000.png", "00001.png"]
    assert torch.equal(_all(dm)[0], _all(ImageFolderDataModule(str(photos_dir), resolution=64))[0][:2])


def test_pairs_with_clean_folder_by_stem(photos_dir, saved, tmp_path):
    """A protected set written from dataset rows pairs with the clean folder: stems match."""
    from lightning_cat.images import save_png

    dm = HFImageDataModule(str(saved), resolution=64)
    protected = tmp_path / "protected"
    protected.mkdir()
    for item in (dm.dataset[i] for i in range(len(dm.dataset))):
        save_png(item["image"], protected / item["path"].rsplit("/", 1)[-1])
    paired = PairedImageDataModule(str(photos_dir), str(protected), resolution=64)
    item = paired.dataset[0]
    assert torch.equal(item["image"], item["clean"])


def test_bad_column_split_and_source(saved, photos_dir, tmp_path):
    with pytest.raises(
        ValueError, match=r"image_column 'img' is not a column; its columns are \['image', 'file_name'\]"
    ):
        HFImageDataModule(str(saved), image_column="img", resolution=64)
    with pytest.raises(ValueError, match="image_column 'file_name' is a Value column, not an image"):
        HFImageDataModule(str(saved), image_column="file_name", resolution=64)
    with pytest.raises(ValueError, match="stem_column 'name' is not a column"):
        HFImageDataModule(str(saved), stem_column="name", resolution=64)
    with pytest.raises(ValueError, match="single saved Dataset without splits; leave split unset"):
        HFImageDataModule(str(saved), split="train", resolution=64)
    with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['train'\]"):
        HFImageDataModule(str(photos_dir), split="validation", resolution=64)
    with pytest.raises(FileNotFoundError, match=r"dataset '.*/missing/saved' does not exist"):
        HFImageDataModule(str(tmp_path / "missing" / "saved"), resolution=64)
    with pytest.raises(ConnectionError, match="dataset 'someone/photos' is not a local folder.*offline"):
        HFImageDataModule("someone/photos", resolution=64)


def test_bad_rows_are_named_by_index_and_column(odd_images, photos_dir, tmp_path):
    good = sorted(photos_dir.glob("*.png"))[0]
    rows = [good.read_bytes(), odd_images["corrupt"].read_bytes()]
    table = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in rows]})
    table.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "corrupt"))
    with pytest.raises(ImageInputError, match=r"cannot decode image row 1 \(column 'image'\) of dataset"):
        HFImageDataModule(str(tmp_path / "corrupt"), resolution=64)
    _saved_dataset(None, [good, odd_images["small"]], tmp_path / "small")
    with pytest.raises(ImageInputError, match=r"row 1 \(column 'image'\) .* is 8x8, smaller than resolution 64"):
        HFImageDataModule(str(tmp_path / "small"), resolution=64)
    _saved_dataset(None, [good, good], tmp_path / "twice")
    with pytest.raises(ValueError, match=r"several rows have the stem \['astronaut'\] \(from file_name\)"):
        HFImageDataModule(str(tmp_path / "twice"), resolution=64)


def test_missing_datasets_package_is_named(monkeypatch, saved):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ModuleNotFoundError, match="needs the datasets package: pip install datasets"):
        HFImageDataModule(str(saved), resolution=64)


def test_cli_trains_cat_on_a_saved_dataset(saved, tmp_path):
    from peft import PeftModel

    from lightning_cat.cli import main
    from lightning_cat.diffusion import load_vae

    adapter = tmp_path / "adapter"
    cli = main(
        ["fit", "--model", "CATAdapterModule", "--model.lora_rank", "4", "--model.output_dir", str(adapter)]
        + ["--data", "HFImageDataModule", "--data.source", str(saved), "--data.resolution", "32"]
        + ["--data.batch_size", "2", "--trainer.max_steps", "1", "--trainer.accelerator", "cpu"]
        + ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
        + ["--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]
    )
    assert cli.trainer.global_step == 1 and len(cli.datamodule.dataset) == 5
    assert sum("lora_B" in name for name, _ in PeftModel.from_pretrained(load_vae("tiny"), adapter).named_parameters())


def test_a_protected_set_from_dataset_rows_pairs_with_the_clean_folder(photos_dir, saved, tmp_path):
    """ProtectionModule on dataset rows writes files named by the rows' stems, which pair with the folder."""
    from lightning.pytorch import Trainer

    from lightning_cat.modules import ProtectionModule

    out = tmp_path / "protected"
    module = ProtectionModule(method="advdm_plus", output_dir=str(out), eps_255=8, alpha_255=4, steps=1)
    data = HFImageDataModule(str(saved), resolution=32, batch_size=5)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, data)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in photos_dir.glob("*.png"))
    paired = PairedImageDataModule(str(photos_dir), str(out), resolution=32)
    item = paired.dataset[0]
    linf = (item["image"] - item["clean"]).abs().max().item() * 127.5
    assert 0 < linf <= 8 + 1e-4
