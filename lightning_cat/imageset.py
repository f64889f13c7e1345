"""Image sets on disk: a folder of PNGs plus ``manifest.json`` (protected or purified sets).

The writer of a set (protection, purification) calls :func:`prepare_output_dir` before any
expensive work, saves each image with :func:`save_png` and measures it with
:func:`measure_saved_image` against its identically preprocessed clean source, then writes the
manifest last with :func:`write_manifest`, so a folder with a manifest is a finished set.

A set's identity (:data:`IDENTITY_KEYS`) includes its ``inputs``: the stem and content hash of
every source image (:func:`input_hashes`), so a run on other images is refused like a run with
another method. While a set is unfinished, each saved image can be recorded in the folder's
hidden journal (:func:`record_finished_image`); a re-run with the same identity trusts exactly
those images (:func:`finished_images`: same identity, PNG unchanged) and redoes the rest. The
manifest replaces the journal when the set is finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_cat.atomic import atomic_write_json, check_writable
from lightning_cat.images import IMAGE_EXTENSIONS, ImageInputError, load_image
from lightning_cat.pixels import to_uint8

__all__ = [
    "IDENTITY_KEYS",
    "JOURNAL",
    "MANIFEST",
    "file_sha256",
    "finished_images",
    "input_hashes",
    "measure_saved_image",
    "prepare_output_dir",
    "read_manifest",
    "record_finished_image",
    "write_manifest",
]

MANIFEST = "manifest.json"
#: Hidden folder of an unfinished set: one record per finished image (removed by the manifest).
JOURNAL = ".finished-images"
#: Manifest entries that identify a set: two runs agreeing on all of them produce the same set.
IDENTITY_KEYS = ("method", "params", "eps_255", "resolution", "preprocessing", "seed", "model", "inputs")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_hashes(dataset: Any) -> dict[str, str]:
    """``{stem: sha256}`` of the decoded pixels (and size) of every source image of ``dataset`` (an
    image dataset with ``stems`` and ``open_image``: a folder's or a table's): the ``inputs`` entry
    of a set's identity. Pixels, not file bytes, so rows of a table hash like files."""
    hashes = {}
    for index, stem in enumerate(dataset.stems):
        image = dataset.open_image(index)
        digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
        digest.update(np.asarray(image, dtype=np.uint8).tobytes())
        hashes[stem] = digest.hexdigest()
    return dict(sorted(hashes.items()))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` when it has none.

    Raises:
        ImageInputError: if the manifest is not valid JSON (naming the file).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ImageInputError(f"manifest '{path}' is not valid JSON: {error}") from error


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    # JSON round trip so tuples/lists and int/float spellings compare as they are stored.
    return json.loads(json.dumps({key: manifest.get(key) for key in IDENTITY_KEYS}))


def _identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_identity(identity), sort_keys=True).encode()).hexdigest()


def _journal_entries(folder: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in sorted((folder / JOURNAL).glob("*.json")) if (folder / JOURNAL).is_dir() else []:
        try:
            entries[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # written atomically, so only a foreign file can be unreadable: not trusted
    return entries


def record_finished_image(
    output_dir: str | os.PathLike, stem: str, identity: dict[str, Any], record: dict[str, Any]
) -> None:
    """Journal the saved ``<stem>.png`` of an unfinished set (call after saving it)."""
    folder = Path(output_dir)
    entry = {"identity": _identity_digest(identity), "sha256": file_sha256(folder / f"{stem}.png"), "record": record}
    atomic_write_json(folder / JOURNAL / f"{stem}.json", entry)


def finished_images(output_dir: str | os.PathLike, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{stem: record}`` of the journaled images of an unfinished set that a run with ``identity``
    can keep: recorded under the same identity, PNG unchanged since. Empty for a finished set."""
    folder = Path(output_dir)
    if read_manifest(folder) is not None:
        return {}
    digest, finished = _identity_digest(identity), {}
    for stem, entry in _journal_entries(folder).items():
        png = folder / f"{stem}.png"
        if entry.get("identity") == digest and png.is_file() and file_sha256(png) == entry.get("sha256"):
            finished[stem] = entry["record"]
    return finished


def prepare_output_dir(output_dir: str | os.PathLike, identity: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Create ``output_dir`` for a set, refusing to mix it with a different one.

    Accepted: a missing or empty folder, a set with the same identity (see :data:`IDENTITY_KEYS`),
    or an unfinished set whose journal records only this identity (a run to resume). A folder
    holding a different set (finished or not), or images without a manifest or journal, raises
    unless ``overwrite`` (then its images, manifest and journal are removed). The folder (or the
    one it will be created in) must be writable.

    Raises:
        FileExistsError: naming the folder and the entries that differ.
        PermissionError: if the folder cannot be written, naming it.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"output_dir '{folder}' is a file")
    check_writable(folder)
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS] if folder.is_dir() else []
    existing = read_manifest(folder) if folder.is_dir() else None
    conflict = None
    if existing is not None:
        ours, theirs = _identity(identity), _identity(existing)
        differing = [key for key in IDENTITY_KEYS if ours[key] != theirs[key]]
        if differing:
            conflict = f"holds a different set (differs in {differing})"
    elif images:
        digests = {entry.get("identity") for entry in _journal_entries(folder).values()}
        if digests - {_identity_digest(identity)}:
            conflict = f"holds an unfinished different set ({len(images)} images, journal in {JOURNAL}/)"
        elif not digests:
            conflict = f"holds {len(images)} images but no {MANIFEST}"
    if conflict and not overwrite:
        raise FileExistsError(f"output_dir '{folder}' {conflict}; choose another folder or set overwrite=True")
    if conflict:
        for path in images:
            path.unlink()
        (folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder / JOURNAL, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def measure_saved_image(path: str | os.PathLike, clean: torch.Tensor) -> dict[str, float]:
    """L_inf and L2 (in /255) and PSNR (dB) of a saved 8-bit image against its clean ``[3, H, W]`` tensor.

    Both are computed on integers from the file, in float, so nothing wraps around.
    """
    saved = torch.from_numpy(np.array(load_image(path), dtype=np.int64)).permute(2, 0, 1)
    reference = to_uint8(clean).to(torch.int64).cpu()
    if saved.shape != reference.shape:
        raise ValueError(f"saved image '{path}' is {tuple(saved.shape)}, clean reference {tuple(reference.shape)}")
    difference = (saved - reference).to(torch.float64)
    mse = difference.pow(2).mean().item()
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
    return {"linf_255": int(difference.abs().max().item()), "l2_255": difference.norm().item(), "psnr": psnr}


def write_manifest(output_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Atomically write ``manifest.json`` (call it after every image of the set is saved); the
    finished set's journal is removed after it."""
    from lightning_cat import __version__

    path = Path(output_dir) / MANIFEST
    missing = [key for key in IDENTITY_KEYS + ("files",) if key not in manifest]
    if missing:
        raise ValueError(f"manifest for '{output_dir}' lacks {missing}")
    absent = [name for name in manifest["files"] if not (Path(output_dir) / f"{name}.png").is_file()]
    if absent:
        raise FileNotFoundError(f"manifest for '{output_dir}' lists images that were not written: {absent}")
    record = {**manifest, "lightning_cat_version": __version__}
    # JSON cannot hold inf (a PSNR of an unchanged image); store it as null.
    for entry in record["files"].values():
        if isinstance(entry.get("psnr"), float) and math.isinf(entry["psnr"]):
            entry["psnr"] = None
    atomic_write_json(path, record)
    shutil.rmtree(Path(output_dir) / JOURNAL, ignore_errors=True)
    return path
