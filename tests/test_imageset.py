"""Image sets on disk: guarded output folders, measured budgets, manifests written last."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_cat.images import save_png
from lightning_cat.imageset import measure_saved_image, prepare_output_dir, read_manifest, write_manifest

IDENTITY = {
    "method": "advdm_plus",
    "params": {"steps": 3},
    "eps_255": 8,
    "resolution": 64,
    "preprocessing": {"resolution": 64},
    "seed": 0,
    "model": "tiny",
    "inputs": {"a": "0" * 64},
}


def test_measure_saved_image_from_the_file(tmp_path):
    clean = torch.randint(0, 256, (3, 8, 8)).float() / 127.5 - 1
    protected = (clean + 2 * 5 / 255).clamp(-1, 1)
    protected[0, 0, 0] = (clean[0, 0, 0] - 2 * 7 / 255).clamp(-1, 1)
    save_png(protected, tmp_path / "x.png")
    measured = measure_saved_image(tmp_path / "x.png", clean)
    assert measured["linf_255"] == 7
    assert 30 < measured["psnr"] < 40
    assert measure_saved_image(tmp_path / "x.png", protected)["linf_255"] == 0


def test_prepare_output_dir_guards_other_sets(tmp_path):
    folder = prepare_output_dir(tmp_path / "set", IDENTITY)
    save_png(torch.zeros(3, 4, 4), folder / "a.png")
    with pytest.raises(FileExistsError, match="holds 1 images but no manifest.json"):
        prepare_output_dir(folder, IDENTITY)
    write_manifest(folder, {**IDENTITY, "files": {"a": {"source": "a.png", "linf_255": 0, "psnr": float("inf")}}})
    assert read_manifest(folder)["files"]["a"]["psnr"] is None and "lightning_cat_version" in read_manifest(folder)
    assert prepare_output_dir(folder, json.loads(json.dumps(IDENTITY))) == folder  # same set: fine
    with pytest.raises(FileExistsError, match=r"differs in \['eps_255'\]"):
        prepare_output_dir(folder, {**IDENTITY, "eps_255": 16})
    prepare_output_dir(folder, {**IDENTITY, "eps_255": 16}, overwrite=True)
    assert list(folder.iterdir()) == []


def test_manifest_refuses_missing_images_and_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\['ghost'\]"):
        write_manifest(tmp_path, {**IDENTITY, "files": {"ghost": {}}})
    with pytest.raises(ValueError, match="lacks"):
        write_manifest(tmp_path, {"files": {}})
    assert not (tmp_path / "manifest.json").exists()
