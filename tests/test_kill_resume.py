"""Kill and resume: a protection killed after some images keeps them and finishes the rest, equal
value for value to an uninterrupted run; the experiment runner killed during protect, CAT and
customize finishes a grid equal to an uninterrupted one (issues 17 and 18)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lightning_cat.experiment import ExperimentRunner, load_experiment_config
from lightning_cat.experiment.store import MARKER
from lightning_cat.imageset import JOURNAL, read_manifest
from lightning_cat.protections.base import Protection

sys.path.insert(0, str(Path(__file__).parent))
from killing import run_and_kill_when  # noqa: E402
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


# ---------------------------------------------------------------- the experiment runner


def write_grid(tmp_path: Path, photos_dir: Path, defenses: list[str]) -> Path:
    """A small grid (one subject of two images, AdvDM+, LoRA) with the fast tiny stage configs."""
    from test_experiment import _fast_stage_configs

    subject = tmp_path / "subject"
    subject.mkdir(parents=True)
    for name in ("astronaut", "coffee"):
        shutil.copyfile(photos_dir / f"{name}.png", subject / f"{name}.png")
    experiment = {
        "run_dir": str(tmp_path / "run"),
        "model": "tiny",
        "seed": 0,
        "subjects": {"photos": [str(subject)]},
        "protections": ["advdm_plus"],
        "defenses": defenses,
        "customizations": ["lora"],
        "stages": _fast_stage_configs(tmp_path / "stages"),
        "trainer": {"accelerator": "cpu", "devices": 1},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def run_grid(experiment: Path) -> None:
    ExperimentRunner(load_experiment_config(experiment)).run()


def kill_grid_during(experiment: Path, stage: str) -> None:
    """Start the runner as its own process group and SIGKILL the group shortly into ``stage`` (a
    path under the run directory, e.g. ``protect/photos/advdm_plus``), before it finishes."""
    partial = experiment.parent / "run" / f"{stage}.partial"
    # settle: into the stage's work (the shortest, CAT, takes about a second here)
    alive = run_and_kill_when(["experiment", "--config", str(experiment)], partial.exists, timeout=300, settle=0.3)
    assert alive and partial.exists(), f"the runner did not stop inside {stage}"
    assert not (partial.parent / stage.rsplit("/", 1)[-1] / MARKER).exists()  # killed before it finished


def _comparable(value):
    if isinstance(value, dict):
        return {key: _comparable(v) for key, v in value.items() if key != "seconds"}  # a stage's wall time
    if isinstance(value, list):
        items = [_comparable(v) for v in value]
        return sorted(items, key=json.dumps) if all(isinstance(v, str) for v in items) else items
    return value


def grid_outputs(run_dir: Path) -> dict[str, object]:
    """Every output file of a run, as what must be equal between two runs with the same seed:
    bytes (their hash) of images and tables, values of JSON (string lists as sets: peft writes
    ``target_modules`` from a set, in hash order) and of safetensors (their header order varies).
    Logs are left out: console logs (progress bars with timings) and the loggers' folders
    (``lightning_logs/version_N``: a resumed stage adds a version; event files are named and
    stamped with wall time). Paths are made relative to the run."""
    outputs: dict[str, object] = {}
    for path in sorted(run_dir.rglob("*")):
        name = str(path.relative_to(run_dir))
        if not path.is_file() or path.name == "stage.log" or "lightning_logs" in path.parts:
            continue
        if path.suffix == ".safetensors":
            tensors = load_file(path)
            outputs[name] = {key: hashlib.sha256(t.numpy().tobytes()).hexdigest() for key, t in tensors.items()}
            continue
        data = path.read_bytes().replace(str(run_dir.parent).encode(), b"<tmp>")
        if path.suffix == ".json":
            outputs[name] = _comparable(json.loads(data))
        else:
            outputs[name] = hashlib.sha256(data).hexdigest()
    return outputs


def check_equal_runs(resumed: Path, reference: Path) -> None:
    assert not list(resumed.rglob("*.partial")) and not list(resumed.rglob(".*.tmp"))
    ours, theirs = grid_outputs(resumed), grid_outputs(reference)
    assert sorted(ours) == sorted(theirs)
    assert {name for name in ours if ours[name] != theirs[name]} == set()
    rows = json.loads((resumed / "results.json").read_text())
    assert rows == json.loads((reference / "results.json").read_text())  # every value of the table
    assert rows and all(math.isfinite(row["fid"]) for row in rows)


def test_a_grid_killed_during_customize_equals_an_uninterrupted_run(photos_dir, tmp_path):
    reference = write_grid(tmp_path / "reference", photos_dir, ["none"])
    run_grid(reference)
    killed = write_grid(tmp_path / "killed", photos_dir, ["none"])
    kill_grid_during(killed, "customize/photos/advdm_plus/none/lora")
    run_grid(killed)
    check_equal_runs(killed.parent / "run", reference.parent / "run")


@pytest.mark.slow
def test_a_grid_killed_during_protect_cat_and_customize_equals_an_uninterrupted_run(photos_dir, tmp_path):
    defenses = ["none", "cat:both"]
    reference = write_grid(tmp_path / "reference", photos_dir, defenses)
    run_grid(reference)
    killed = write_grid(tmp_path / "killed", photos_dir, defenses)
    for stage in ("protect/photos/advdm_plus", "customize/photos/advdm_plus/none/lora", "cat/photos/advdm_plus/both"):
        kill_grid_during(killed, stage)
    run_grid(killed)
    check_equal_runs(killed.parent / "run", reference.parent / "run")
