"""Purified sets from the CLI: PurificationModule + PurifiedSetWriter, manifests, folders, DDP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_cat.cli import main
from lightning_cat.datamodules import ImageFolderDataModule
from lightning_cat.imageset import measure_saved_image, read_manifest
from lightning_cat.pixels import to_uint8
from lightning_cat.purification import JPEGCompression, LatentDiffPure

CONFIGS = Path(__file__).parents[1] / "configs" / "purify"


@pytest.fixture
def source(photos_dir, tmp_path):
    """Two photographs standing in for a protected set, with a protection manifest."""
    folder = tmp_path / "protected"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        shutil.copy(photos_dir / f"{name}.png", folder)
    (folder / "manifest.json").write_text(json.dumps({"method": "aspl", "eps_255": 8}))
    return folder


def run_config(name: str, tmp_path: Path, root: Path, output: Path, purifier_args=None, trainer=None, data=None):
    """Run configs/purify/<name> in-process with the input, output and run folders moved to tmp."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    config["data"]["init_args"]["root"] = str(root)
    config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(output)
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    config["trainer"].update(trainer or {})
    config["data"]["init_args"].update(data or {})
    config["model"]["init_args"]["purifier"]["init_args"].update(purifier_args or {})
    path = tmp_path / f"run-{name}"
    path.write_text(yaml.safe_dump(config))
    return main(["predict", "--config", str(path)])


def saved(folder: Path, stem: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(folder / f"{stem}.png"))).permute(2, 0, 1)


def test_cli_writes_a_purified_set(source, tmp_path):
    output = tmp_path / "jpeg"
    run_config("jpeg.tiny.yaml", tmp_path, source, output)
    manifest = read_manifest(output)
    assert manifest["method"] == "purify:jpeg" and manifest["purifier"] == {"name": "jpeg", "quality": 75}
    assert manifest["params"] == {"quality": 75, "source": str(source.resolve())}
    assert manifest["resolution"] == 64 and manifest["preprocessing"]["resolution"] == 64
    assert manifest["source"]["manifest"] == {"method": "aspl", "eps_255": 8}
    assert manifest["seed"] == 0 and manifest["model"] is None and manifest["eps_255"] is None
    assert sorted(manifest["files"]) == ["astronaut", "coffee"]
    # The set equals the datamodule option with the same purifier and seed, and the recorded
    # measurements are those of the saved files against the preprocessed sources.
    plain = ImageFolderDataModule(str(source), resolution=64).dataset
    purified = ImageFolderDataModule(str(source), resolution=64, purifier=JPEGCompression(75)).dataset
    for index, stem in enumerate(plain.stems):
        assert torch.equal(saved(output, stem), to_uint8(purified[index]["image"]))
        entry = manifest["files"][stem]
        measured = measure_saved_image(output / f"{stem}.png", plain[index]["image"])
        assert entry["linf_255"] == measured["linf_255"] > 0
        assert entry["psnr"] == pytest.approx(measured["psnr"])
        assert Path(entry["source"]).name == f"{stem}.png"


def test_model_based_set_equals_the_datamodule_option(source, tmp_path):
    options = {"timestep": 4, "num_inference_steps": 2}
    output = tmp_path / "latent"
    cli = run_config("latent_diffpure.tiny.yaml", tmp_path, source, output, purifier_args=options)
    assert cli.model.purifier.timestep == 4
    manifest = read_manifest(output)
    assert manifest["method"] == "purify:latent_diffpure" and manifest["model"] == "tiny"
    assert manifest["params"]["timestep"] == 4 and manifest["params"]["prompt"] == ""
    purifier = LatentDiffPure("tiny", **options)
    dataset = ImageFolderDataModule(str(source), resolution=64, purifier=purifier, seed=0).dataset
    for index, stem in enumerate(dataset.stems):
        assert torch.equal(saved(output, stem), to_uint8(dataset[index]["image"]))


def test_gradient_based_purifier_runs_under_lightning_inference_mode(source, tmp_path):
    """IMPRESS optimizes images inside Trainer.predict, whose inference mode forbids autograd."""
    output = tmp_path / "impress"
    run_config("impress.tiny.yaml", tmp_path, source, output, purifier_args={"iterations": 2})
    manifest = read_manifest(output)
    assert manifest["method"] == "purify:impress" and manifest["params"]["iterations"] == 2
    assert all(entry["linf_255"] > 0 for entry in manifest["files"].values())


def test_output_folder_is_guarded_before_purifying(source, tmp_path):
    output = tmp_path / "set"
    run_config("jpeg.tiny.yaml", tmp_path, source, output)
    run_config("jpeg.tiny.yaml", tmp_path, source, output)  # same set again: accepted
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}
    with pytest.raises(FileExistsError, match="differs in"):
        run_config("jpeg.tiny.yaml", tmp_path, source, output, purifier_args={"quality": 40})
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir()} == before
    config = yaml.safe_load((CONFIGS / "jpeg.tiny.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["overwrite"] = True
    overwrite = tmp_path / "overwrite.yaml"
    config["data"]["init_args"]["root"] = str(source)
    config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(output)
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    config["model"]["init_args"]["purifier"]["init_args"]["quality"] = 40
    overwrite.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(overwrite)])
    assert read_manifest(output)["params"]["quality"] == 40


def test_purifying_data_and_model_twice_is_refused(source, tmp_path):
    config = yaml.safe_load((CONFIGS / "jpeg.tiny.yaml").read_text())
    config["data"]["init_args"]["purifier"] = {"class_path": "GaussianBlur"}
    config["data"]["init_args"]["root"] = str(source)
    config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / "out")
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="already purifies"):
        main(["predict", "--config", str(path)])


def test_partial_run_writes_no_manifest(source, tmp_path):
    output = tmp_path / "partial"
    with pytest.warns(UserWarning, match="no manifest"):
        run_config(
            "jpeg.tiny.yaml", tmp_path, source, output, trainer={"limit_predict_batches": 1}, data={"batch_size": 1}
        )
    assert read_manifest(output) is None and len(list(output.glob("*.png"))) == 1


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(CONFIGS / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith("PurificationModule")


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_set_equals_one_process(source, photos_dir, tmp_path):
    """Two spawned ranks write the same set (images and manifest files) as one process."""
    from lightning.pytorch import Trainer

    from lightning_cat.callbacks import PurifiedSetWriter
    from lightning_cat.modules import PurificationModule

    shutil.copy(photos_dir / "rocket.png", source)  # 3 images: uneven across 2 ranks
    results = {}
    for devices in (1, 2):
        output = tmp_path / f"ddp{devices}"
        trainer = Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp_spawn" if devices > 1 else "auto",
            logger=False,
            enable_progress_bar=False,
            default_root_dir=str(tmp_path),
            callbacks=[PurifiedSetWriter(str(output))],
        )
        purifier = LatentDiffPure("tiny", timestep=3, num_inference_steps=1)
        data = ImageFolderDataModule(str(source), resolution=64, batch_size=1)
        trainer.predict(PurificationModule(purifier, seed=3), datamodule=data, return_predictions=False)
        results[devices] = output
    one, two = (read_manifest(results[d]) for d in (1, 2))
    assert one["files"] == two["files"] and sorted(one["files"]) == ["astronaut", "coffee", "rocket"]
    for stem in one["files"]:
        assert torch.equal(saved(results[1], stem), saved(results[2], stem))
