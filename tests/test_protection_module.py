"""ProtectionModule and ProtectedImageWriter through the CLI and the Trainer on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_cat.cli import main
from lightning_cat.datamodules import ImageFolderDataModule
from lightning_cat.images import ImageTransform, load_image
from lightning_cat.imageset import IDENTITY_KEYS, measure_saved_image, read_manifest, write_manifest
from lightning_cat.modules import ProtectionModule
from lightning_cat.protections import resolve_protection_options

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "protect"
METHODS = sorted(p.name.removesuffix(".tiny.yaml") for p in CONFIGS.glob("*.tiny.yaml"))


def fit(config: str, photos_dir: Path, output_dir: Path, *extra: str):
    return main(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            "--data.init_args.root",
            str(photos_dir),
            "--model.init_args.output_dir",
            str(output_dir),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(output_dir.parent / f"{output_dir.name}-run"),
            *extra,
        ]
    )


def check_saved_set(output_dir: Path, photos_dir: Path, resolution: int = 64) -> dict:
    """Every input has a PNG within budget (measured from the files) and the manifest agrees."""
    manifest = read_manifest(output_dir)
    assert manifest is not None
    transform = ImageTransform(resolution=resolution)
    stems = sorted(p.stem for p in photos_dir.glob("*.png"))
    assert sorted(manifest["files"]) == stems
    assert sorted(p.stem for p in output_dir.glob("*.png")) == stems
    for stem in stems:
        clean = transform(load_image(photos_dir / f"{stem}.png"))
        measured = measure_saved_image(output_dir / f"{stem}.png", clean)
        assert 0 < measured["linf_255"] <= manifest["eps_255"]
        assert manifest["files"][stem]["linf_255"] == measured["linf_255"]
        assert manifest["files"][stem]["psnr"] == pytest.approx(measured["psnr"])
        assert Path(manifest["files"][stem]["source"]).name == f"{stem}.png"
    return manifest


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail loudly if anything tries to load Stable Diffusion weights."""
    import lightning_cat.modules.base as base

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(base, "load_components", refuse)


def test_cli_writes_a_budgeted_set_with_a_complete_manifest(photos_dir, tmp_path):
    out = tmp_path / "advdm"
    fit("advdm_plus.tiny.yaml", photos_dir, out, "--data.init_args.resolution", "32")
    manifest = check_saved_set(out, photos_dir, resolution=32)
    for key in (*IDENTITY_KEYS, "files", "lightning_cat_version", "max_linf_255"):
        assert key in manifest
    assert manifest["method"] == "advdm_plus" and manifest["seed"] == 0 and manifest["resolution"] == 32
    assert manifest["params"] == json.loads(json.dumps(resolve_protection_options("advdm_plus", alpha_255=4, steps=4)))
    assert manifest["preprocessing"]["crop"] == "center" and manifest["preprocessing"]["purifier"] is None
    assert manifest["model"] == {"name": "tiny", "revision": None, "variant": None}
    assert manifest["max_linf_255"] == max(entry["linf_255"] for entry in manifest["files"].values())


def test_surrogate_method_with_prior_images_through_the_cli(photos_dir, tmp_path):
    out = tmp_path / "aspl"
    fit(
        "aspl.tiny.yaml",
        photos_dir,
        out,
        "--model.init_args.class_root",
        str(photos_dir),
        "--data.init_args.resolution",
        "32",
    )
    manifest = check_saved_set(out, photos_dir, resolution=32)
    assert manifest["params"]["class_root"] == str(photos_dir.resolve())


@pytest.mark.parametrize(
    "flags, error, match",
    [
        (["--model.init_args.eps_255", "0"], ValueError, "eps_255 must be a number > 0"),
        (["--model.init_args.eps_255", "256"], ValueError, "eps_255 must be a number <= 255"),
        (["--model.init_args.steps", "0"], ValueError, "steps must be an integer >= 1"),
        (["--model.init_args.target_image", "x.png"], ValueError, "does not take option"),
        (["--model.init_args.class_root", "."], ValueError, "class_root is used only by"),
        (["--data.init_args.hflip", "true"], ValueError, "deterministically"),
    ],
)
def test_bad_input_fails_before_any_model_loads(photos_dir, tmp_path, no_model_loading, flags, error, match):
    with pytest.raises(error, match=match):
        fit("advdm_plus.tiny.yaml", photos_dir, tmp_path / "out", *flags)
    assert not (tmp_path / "out").exists()


def test_unknown_method_is_rejected_at_parse_time(photos_dir, tmp_path, no_model_loading, capsys):
    with pytest.raises(SystemExit):
        fit("advdm_plus.tiny.yaml", photos_dir, tmp_path / "out", "--model.init_args.method", "glaze")
    err = capsys.readouterr().err
    assert "method" in err and "advdm_plus" in err and "metacloak" in err


def test_folder_holding_another_set_fails_before_any_model_loads(photos_dir, tmp_path, no_model_loading):
    out = tmp_path / "taken"
    out.mkdir()
    torch.manual_seed(0)
    from lightning_cat.images import save_png

    save_png(torch.zeros(3, 64, 64), out / "astronaut.png")
    write_manifest(
        out,
        {
            "method": "mist",
            "params": {},
            "eps_255": 8,
            "resolution": 64,
            "preprocessing": {},
            "seed": 0,
            "model": "tiny",
            "inputs": {},
            "files": {"astronaut": {}},
        },
    )
    with pytest.raises(FileExistsError, match="holds a different set"):
        fit("advdm_plus.tiny.yaml", photos_dir, out)
    assert read_manifest(out)["method"] == "mist"  # nothing overwritten


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_tiny_config_runs(method, photos_dir, tmp_path):
    out = tmp_path / method
    fit(f"{method}.tiny.yaml", photos_dir, out)
    manifest = check_saved_set(out, photos_dir)
    assert manifest["method"] == method


def _protect_with_trainer(photos_dir: Path, out: Path, devices: int) -> None:
    model = ProtectionModule(method="advdm_plus", output_dir=str(out), alpha_255=4, steps=2, seed=5)
    data = ImageFolderDataModule(str(photos_dir), resolution=32, batch_size=1)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)


@pytest.mark.ddp
def test_two_processes_write_the_same_files_as_one(photos_dir, image_folder, tmp_path):
    # Three images over two ranks: the distributed sampler pads one rank with a repeated image.
    photos = image_folder(*(photos_dir / f"{stem}.png" for stem in ("astronaut", "coffee", "rocket")))
    one, two = tmp_path / "one", tmp_path / "two"
    _protect_with_trainer(photos, one, devices=1)
    _protect_with_trainer(photos, two, devices=2)
    check_saved_set(one, photos, resolution=32)
    for path in sorted(one.glob("*.png")):
        assert path.read_bytes() == (two / path.name).read_bytes(), path.name
    first, second = read_manifest(one), read_manifest(two)
    assert first == second


def test_a_method_registered_at_run_time_is_accepted_by_the_module_and_the_cli(photos_dir, tmp_path, monkeypatch):
    # README's "Extending": a new protection is a class added to PROTECTIONS; no Literal to edit.
    from lightning_cat.protections import PROTECTIONS
    from lightning_cat.protections.advdm import AdvDMMinus

    class Descend(AdvDMMinus):
        name = "my_descent"

    monkeypatch.setitem(PROTECTIONS, "my_descent", Descend)
    assert ProtectionModule(method="my_descent", eps_255=4).protection_options["eps_255"] == 4
    fit("advdm_plus.tiny.yaml", photos_dir, tmp_path / "out", "--model.init_args.method", "my_descent")
    assert read_manifest(tmp_path / "out")["method"] == "my_descent"
