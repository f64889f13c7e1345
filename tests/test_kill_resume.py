"""Kill and resume: a protection killed after some images keeps them and finishes the rest, equal
value for value to an uninterrupted run; the experiment runner killed during protect, CAT and
customize finishes a grid equal to an uninterrupted one (issues 17 and 18)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_cat.imageset import JOURNAL, read_manifest
from lightning_cat.protections.base import Protection

sys.path.insert(0, str(Path(__file__).parent))
from protect_kill_run import BATCH_SIZE, protect  # noqa: E402

SCRIPT = Path(__file__).parent / "protect_kill_run.py"
KILL_BEFORE_BATCH = 1


def kill_during_protection(root: Path, output_dir: Path, tmp_path: Path) -> None:
    """Run the protection in a child process that SIGKILLs itself before batch ``KILL_BEFORE_BATCH``."""
    command = [sys.executable, str(SCRIPT), str(root), str(output_dir), str(tmp_path / "child")]
    result = subprocess.run(
        [*command, "--kill-before-batch", str(KILL_BEFORE_BATCH)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


@pytest.fixture
def protected_keys(monkeypatch) -> list[str]:
    """Every image stem a protection computes from now on (in call order)."""
    keys: list[str] = []
    original = Protection.protect

    def counting(self, images, names, **kwargs):
        keys.extend(names)
        return original(self, images, names, **kwargs)

    monkeypatch.setattr(Protection, "protect", counting)
    return keys


@pytest.fixture(scope="module")
def killed_set(photos_dir, tmp_path_factory) -> Path:
    """What a protection killed before its second batch leaves (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("killed") / "set"
    kill_during_protection(photos_dir, folder, folder.parent)
    return folder


@pytest.fixture(scope="module")
def reference(photos_dir, tmp_path_factory) -> Path:
    """The set of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference") / "set"
    protect(str(photos_dir), str(folder), str(folder.parent / "run"))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_killed_protection_keeps_its_finished_images_and_equals_an_uninterrupted_run(
    photos_dir, killed_set, reference, tmp_path, protected_keys
):
    out = shutil.copytree(killed_set, tmp_path / "set")
    finished = sorted(p.stem for p in out.glob("*.png"))
    assert len(finished) == BATCH_SIZE * KILL_BEFORE_BATCH
    assert read_manifest(out) is None  # an unfinished set: no manifest
    assert sorted(p.stem for p in (out / JOURNAL).glob("*.json")) == finished
    stats = {stem: os.stat(out / f"{stem}.png") for stem in finished}

    protect(str(photos_dir), str(out), str(tmp_path / "run"))
    assert sorted(protected_keys) == sorted(set(p.stem for p in photos_dir.glob("*.png")) - set(finished))
    for stem, before in stats.items():  # not rewritten: the same inode, untouched since
        after = os.stat(out / f"{stem}.png")
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert files_of(out) == files_of(reference)  # every PNG byte and every manifest value
    assert not (out / JOURNAL).exists() and not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial"))


def test_images_of_another_identity_or_changed_since_are_never_reused(
    photos_dir, killed_set, reference, tmp_path, protected_keys
):
    out = shutil.copytree(killed_set, tmp_path / "set")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # Another seed is another set: the unfinished one is refused and left as it was.
    with pytest.raises(FileExistsError, match=rf"output_dir '{out}' holds an unfinished different set"):
        protect(str(photos_dir), str(out), str(tmp_path / "run"), seed=1)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert protected_keys == []

    # A finished image changed on disk after it was journaled is not trusted: its batch is redone.
    finished = sorted(p.stem for p in out.glob("*.png"))
    tampered = out / f"{finished[0]}.png"
    shutil.copyfile(photos_dir / f"{finished[0]}.png", tampered)
    protect(str(photos_dir), str(out), str(tmp_path / "run"))
    assert finished[0] in protected_keys
    assert files_of(out) == files_of(reference)

    # overwrite=True replaces an unfinished set of another identity completely.
    other = shutil.copytree(killed_set, tmp_path / "other")
    protected_keys.clear()
    protect(str(photos_dir), str(other), str(tmp_path / "run"), seed=1, overwrite=True)
    assert sorted(protected_keys) == sorted(p.stem for p in photos_dir.glob("*.png"))
    assert read_manifest(other)["seed"] == 1 and not (other / JOURNAL).exists()
    assert read_manifest(other)["inputs"] == read_manifest(reference)["inputs"]
