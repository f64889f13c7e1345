"""Bad input that used to slip through (issue 18): damaged images, unwritable outputs, a set made
from other images, odd PGD step sizes. Each fails (or warns) naming the file or option, before
any model loads, and leaves nothing written or half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from lightning_cat.atomic import check_output_dir, check_writable
from lightning_cat.cli import main
from lightning_cat.images import ImageInputError, load_image
from lightning_cat.imageset import JOURNAL, read_manifest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def locked_dir(tmp_path):
    """A folder nobody may create files in: a tmp folder made read-only, or, for root (whom chmod
    does not stop), a folder of the read-only sysfs; skipped where neither denies writes."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys/kernel")
    try:
        tempfile.NamedTemporaryFile(dir=folder).close()
    except OSError:
        yield folder
        return
    pytest.skip("no folder here denies writes to root")


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail loudly if anything tries to load Stable Diffusion weights."""
    import lightning_cat.modules.base as base

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(base, "load_components", refuse)


def protect(root: Path, output_dir: Path, *extra: str):
    return main(
        [
            "fit",
            "--config",
            str(CONFIGS / "protect/advdm_plus.tiny.yaml"),
            "--data.init_args.root",
            str(root),
            "--data.init_args.resolution",
            "32",
            "--model.init_args.output_dir",
            str(output_dir),
            "--model.init_args.steps",
            "4",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(output_dir.parent / f"{output_dir.name}-run"),
            *extra,
        ]
    )


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(photos_dir, tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        shutil.copyfile(photos_dir / f"{name}.png", folder / f"{name}.png")
    return folder


# ---------------------------------------------------------------- 1. damaged images


def _truncated_png(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes()[:1000])  # header intact, image data cut mid-chunk


@pytest.mark.parametrize(
    ("damage", "name"),
    [
        (lambda source, target: _truncated_png(source, target), "rocket.png"),
        (lambda source, target: target.write_bytes(b""), "empty.jpg"),
    ],
    ids=["truncated-png", "zero-byte-jpg"],
)
def test_a_damaged_image_fails_naming_it_before_any_model_loads(inputs, tmp_path, no_model_loading, damage, name):
    damage(inputs / "astronaut.png", inputs / name)
    out = tmp_path / "out"
    with pytest.raises(ImageInputError, match=rf"cannot decode image '.*{name}'") as caught:
        protect(inputs, out)
    assert caught.type is ImageInputError  # the library's error, not PIL's or struct's
    assert not out.exists()


def test_load_image_decodes_the_whole_file(photos_dir, tmp_path):
    """A file whose header opens but whose data is cut (struct.error inside PIL) is refused."""
    _truncated_png(photos_dir / "rocket.png", tmp_path / "cut.png")
    from PIL import Image

    with Image.open(tmp_path / "cut.png") as header_only:
        assert header_only.size == Image.open(photos_dir / "rocket.png").size  # the header alone looks fine
    with pytest.raises(ImageInputError, match=r"cut\.png.*truncated"):
        load_image(tmp_path / "cut.png")


# ---------------------------------------------------------------- 2. unwritable output folders


def test_a_read_only_output_folder_fails_before_any_model_loads(inputs, locked_dir, no_model_loading):
    before = sorted(os.listdir(locked_dir))
    with pytest.raises(PermissionError, match=rf"output_dir '{locked_dir}' is not writable.*choose another folder"):
        protect(inputs, locked_dir)
    assert sorted(os.listdir(locked_dir)) == before


def test_an_output_folder_under_a_read_only_parent_fails(locked_dir):
    before = sorted(os.listdir(locked_dir))
    target = locked_dir / "a" / "b"
    with pytest.raises(PermissionError, match=rf"'{target}' is not writable.*cannot be created in '{locked_dir}'"):
        check_writable(target, owner="output_dir")
    with pytest.raises(PermissionError, match=r"CATAdapterModule: output_dir"):
        check_output_dir(locked_dir / "adapter", owner="CATAdapterModule: output_dir")
    assert sorted(os.listdir(locked_dir)) == before


@pytest.mark.parametrize("config", ["cat/encoder.tiny.yaml", "dreambooth/lora.tiny.yaml"])
def test_training_stages_refuse_an_unwritable_output_dir_before_loading(
    locked_dir, photos_dir, tmp_path, no_model_loading, config
):
    target = locked_dir / "model"
    data = ["--data.init_args.root", str(photos_dir)]
    if config.startswith("dreambooth"):
        data = ["--data.init_args.instance_root", str(photos_dir), "--data.init_args.class_root", str(tmp_path / "c")]
    with pytest.raises(PermissionError, match=rf"output_dir '{target}' is not writable"):
        main(["fit", "--config", str(CONFIGS / config), *data, "--model.init_args.output_dir", str(target)])


def test_writers_and_the_runner_refuse_unwritable_folders(locked_dir):
    from lightning_cat.callbacks import MetricsWriter, SampleWriter
    from lightning_cat.experiment import ExperimentRunner

    before = sorted(os.listdir(locked_dir))
    with pytest.raises(PermissionError, match=rf"SampleWriter: output_dir '{locked_dir / 'samples'}'"):
        SampleWriter(str(locked_dir / "samples"))
    with pytest.raises(PermissionError, match=rf"MetricsWriter: folder of path '{locked_dir}'"):
        MetricsWriter(str(locked_dir / "metrics.json"))

    class Config:  # run() checks run_dir before it plans anything
        run_dir = str(locked_dir / "run")

    runner = ExperimentRunner.__new__(ExperimentRunner)
    runner.config = Config()
    with pytest.raises(PermissionError, match=rf"experiment run_dir '{locked_dir / 'run'}' is not writable"):
        runner.run()
    assert sorted(os.listdir(locked_dir)) == before


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []  # nothing created, the probe removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"lies under the file"):
        check_writable(tmp_path / "file" / "sub")


# ---------------------------------------------------------------- 3. same settings, other inputs


def test_a_set_from_other_images_is_refused_and_kept(inputs, tmp_path, photos_dir):
    out = tmp_path / "set"
    protect(inputs, out)
    before = folder_state(out)
    assert sorted(read_manifest(out)["inputs"]) == ["astronaut", "coffee", "rocket"]

    # Same stems, one image's content changed: refused, naming the folder and `inputs`.
    other = tmp_path / "other"
    shutil.copytree(inputs, other)
    shutil.copyfile(photos_dir / "chelsea.png", other / "coffee.png")
    with pytest.raises(FileExistsError, match=rf"output_dir '{out}' holds a different set \(differs in \['inputs'\]\)"):
        protect(other, out)
    # One stem fewer: refused too.
    (inputs / "rocket.png").unlink()
    with pytest.raises(FileExistsError, match=r"differs in \['inputs'\]"):
        protect(inputs, out)
    assert folder_state(out) == before  # nothing of the old set lost or mixed

    protect(other, out, "--model.init_args.overwrite", "true")
    manifest = read_manifest(out)
    assert manifest["inputs"]["coffee"] != json.loads(before["manifest.json"])["inputs"]["coffee"]
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "coffee.png", "manifest.json", "rocket.png"]


# ---------------------------------------------------------------- 4. odd step sizes


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"alpha_255": 12, "eps_255": 8}, r"'advdm_plus': alpha_255=12 is larger than eps_255=8: every PGD step"),
        ({"alpha_255": 1, "steps": 3, "eps_255": 8}, r"'advdm_plus': steps x alpha_255 = 3 x 1 .* is below eps_255=8"),
        (
            {"method": "photoguard", "alpha_255": 1, "steps": 6, "step_schedule": "linear", "eps_255": 8},
            # sum of PGD.step_size over 6 steps decaying to 1%: 6 - 0.99 * (0 + 1 + ... + 5) / 6 = 3.525
            r"'photoguard': steps x alpha_255 = 6 x 1 \(total step length 3.525\) is below eps_255=8",
        ),
    ],
    ids=["alpha-above-eps", "steps-too-few", "linear-schedule-too-short"],
)
def test_odd_step_sizes_warn_naming_the_option(tmp_path, no_model_loading, options, match):
    from lightning_cat.modules import ProtectionModule

    with pytest.warns(UserWarning, match=match):
        ProtectionModule(output_dir=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()


def test_the_protection_configs_do_not_warn_about_their_step_sizes():
    import warnings

    from lightning_cat.protections import protection_class

    for path in sorted((CONFIGS / "protect").glob("*.yaml")):
        options = dict(yaml.safe_load(path.read_text())["model"]["init_args"])
        method = protection_class(options.pop("method"))
        files = ("target_image", "lpips_backbone_weights")  # paths of the user's, not needed here
        given = {k: v for k, v in options.items() if k in method.defaults and k not in files}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            method.resolve(**given)


def test_a_journal_folder_is_not_an_image(tmp_path):
    """The journal of an unfinished set is hidden from image listings (it is no part of the set)."""
    from lightning_cat.images import list_images, save_png

    save_png(torch.zeros(3, 4, 4), tmp_path / "a.png")
    (tmp_path / JOURNAL).mkdir()
    (tmp_path / JOURNAL / "a.json").write_text("{}")
    assert [p.name for p in list_images(tmp_path)] == ["a.png"]
