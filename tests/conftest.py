"""Shared fixtures: offline settings, the tiny model, real and odd test images."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Offline before anything imports huggingface_hub; a private cache so the tiny model is built here.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny models' ops are too small to gain from intra-op threads, and with two threads per
# process the DDP tests' workers (and anything else on the 2 cores) make OpenMP spin-wait:
# measured 5-10x slower per test. Subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("LIGHTNING_CAT_CACHE", tempfile.mkdtemp(prefix="lightning-cat-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).parent / "data"))
import make_images  # noqa: E402

TINY_RESOLUTION = 64
REPOSITORY = Path(__file__).resolve().parent.parent
# Written by Python and pytest themselves, not by the tests.
_TOOL_OUTPUTS = ("__pycache__", ".pytest_cache", ".egg-info")
_STATUS_BEFORE = pytest.StashKey[set | None]()


def _work_tree_status() -> set[str] | None:
    """``git status`` lines of the repository, ignored files included (None outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=REPOSITORY, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return {line for line in result.stdout.splitlines() if not any(part in line for part in _TOOL_OUTPUTS)}


def pytest_sessionstart(session) -> None:
    session.config.stash[_STATUS_BEFORE] = _work_tree_status()


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the run when the tests added or changed a file in the repository (outputs go to tmp_path)."""
    before = session.config.stash.get(_STATUS_BEFORE, None)
    after = _work_tree_status()
    if before is None or after is None:
        return
    added = sorted(after - before)
    if added:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "the test run wrote into the repository (write to tmp_path instead):\n  " + "\n  ".join(added)
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from lightning_cat.diffusion import ensure_tiny_model

    return ensure_tiny_model("tiny")


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """Five real photographs (scikit-image), shorter side 80 px, as PNG."""
    folder = tmp_path_factory.mktemp("photos")
    make_images.write_photos(folder, size=80)
    return folder


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    return make_images.write_odd_images(tmp_path_factory.mktemp("odd"))


@pytest.fixture
def two_photos(photos_dir, image_folder):
    """A folder with two of the test photographs (astronaut, coffee)."""
    return image_folder(photos_dir / "astronaut.png", photos_dir / "coffee.png", name="protected")


@pytest.fixture
def image_folder(tmp_path):
    """Factory: a folder holding copies of the given files."""

    def make(*files: Path, name: str = "images") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            (folder / file.name).write_bytes(file.read_bytes())
        return folder

    return make
