"""Long stages in an experiment: the user's Trainer options and logger reach them, and a stage killed
mid-way resumes from its last checkpoint to the result an uninterrupted run gives."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from killing import run_and_kill_when  # tests/killing.py
from safetensors.torch import load_file

from lightning_cat.experiment import ExperimentRunner, load_experiment_config
from lightning_cat.experiment.store import MARKER

ROOT = Path(__file__).resolve().parents[1]
CAT_STEPS = 24
EVERY = 4


def _experiment(tmp_path: Path, photos_dir: Path, run_dir: Path, trainer: dict | None = None) -> Path:
    """A grid whose only long stage is a CAT adapter trained on the clean images (one batch per epoch)."""
    subject = tmp_path / "subject"
    if not subject.exists():
        subject.mkdir()
        for name in ("astronaut", "coffee"):
            shutil.copyfile(photos_dir / f"{name}.png", subject / f"{name}.png")
    cat = yaml.safe_load((ROOT / "configs/cat/both.tiny.yaml").read_text())
    cat["trainer"].update(max_steps=CAT_STEPS, enable_progress_bar=False)
    cat["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = EVERY
    cat["model"]["init_args"].update(lora_rank=2)
    cat["data"]["init_args"].update(resolution=32, batch_size=2)
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump(cat))
    experiment = {
        "run_dir": str(run_dir),
        "subjects": {"photos": [str(subject)]},
        "protections": ["clean"],
        "defenses": ["cat:both"],
        "customizations": ["lora"],
        "stages": {
            "cat": {"both": str(tmp_path / "cat.yaml")},
            "customize": {"lora": str(ROOT / "configs/dreambooth/lora.tiny.yaml")},
            "sample": str(ROOT / "configs/dreambooth/sample.tiny.yaml"),
            "evaluate": str(ROOT / "configs/eval/metrics.tiny.yaml"),
        },
        "trainer": {"accelerator": "cpu", "devices": 1, **(trainer or {})},
    }
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def _run_cat_stage(experiment: Path) -> ExperimentRunner:
    """Run (or resume) the subject and CAT stages of ``experiment`` in this process."""
    runner = ExperimentRunner(load_experiment_config(experiment))
    for stage in runner.plan():
        if stage.key[0] in ("subjects", "cat"):
            stage.result = runner.store.run(stage.key, stage.fingerprint, stage.work)
    return runner


def test_the_experiments_trainer_options_and_logger_reach_the_stage(tmp_path, photos_dir):
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": ".", "name": "csv"}}
    trainer = {"max_steps": 3, "log_every_n_steps": 1, "logger": logger}
    _run_cat_stage(_experiment(tmp_path, photos_dir, tmp_path / "run", trainer))
    stage = tmp_path / "run/cat/photos/clean/both"
    with open(stage / "logs/csv/version_0/metrics.csv") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]
    assert steps == [0, 1, 2]  # max_steps 3 and log_every_n_steps 1 (the stage file says 24 and 50)
    assert (stage / "adapter/adapter_model.safetensors").is_file()
    assert not (stage / "checkpoints").exists()  # a finished stage keeps its outputs, not its checkpoints


def test_the_experiment_can_turn_the_stage_checkpoints_off(tmp_path, photos_dir):
    trainer = {"max_steps": 2, "enable_checkpointing": False, "logger": False}
    _run_cat_stage(_experiment(tmp_path, photos_dir, tmp_path / "run", trainer))
    stage = tmp_path / "run/cat/photos/clean/both"
    assert yaml.safe_load((stage / "stage_config.yaml").read_text())["trainer"]["callbacks"] == []
    assert (stage / "adapter/adapter_model.safetensors").is_file()
    assert not list(stage.rglob("*.ckpt")) and not list(stage.rglob("metrics.csv"))  # logger: false honoured too


def test_a_killed_cat_stage_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, photos_dir):
    killed = _experiment(tmp_path, photos_dir, tmp_path / "killed")
    partial = tmp_path / "killed/cat/photos/clean/both.partial"
    checkpoint = partial / "checkpoints/last.ckpt"
    run_and_kill_when(["experiment", "--config", str(killed)], checkpoint.is_file)
    assert checkpoint.is_file(), "the CAT stage wrote no checkpoint before the deadline"
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["global_step"] < CAT_STEPS and saved["global_step"] % EVERY == 0
    assert not (partial.parent / "both" / MARKER).exists()

    _run_cat_stage(killed)
    final = tmp_path / "killed/cat/photos/clean/both"
    resumed_from = yaml.safe_load((final / "stage_config.yaml").read_text())["ckpt_path"]
    assert resumed_from == str(checkpoint)  # resumed from the killed run's checkpoint, not from zero
    assert "Restored all states from the checkpoint" in (final / "stage.log").read_text()
    assert not partial.exists() and not (final / "checkpoints").exists()

    _run_cat_stage(_experiment(tmp_path, photos_dir, tmp_path / "uninterrupted"))
    resumed = load_file(final / "adapter/adapter_model.safetensors")
    uninterrupted = load_file(tmp_path / "uninterrupted/cat/photos/clean/both/adapter/adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    # Same steps on the same batches, noise and optimizer state, on the same CPU kernels: bit for bit.
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in resumed.items() if "lora_B" in k)


@pytest.mark.parametrize("stale", ["another config", "--overwrite"])
def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, photos_dir, stale):
    """A partial folder left by a run with another fingerprint (or under overwrite) starts from zero."""
    experiment = _experiment(tmp_path, photos_dir, tmp_path / "run")
    runner = ExperimentRunner(load_experiment_config(experiment), overwrite=stale == "--overwrite")
    stage = next(s for s in runner.plan() if s.key[0] == "cat")
    partial = runner.store.path(*stage.key).with_name("both.partial")
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints/last.ckpt").write_bytes(b"not a checkpoint")
    fingerprint = "0" * 16 if stale == "another config" else stage.fingerprint
    (partial / ".stage-started.json").write_text(f'{{"fingerprint": "{fingerprint}"}}')
    for planned in runner.plan():
        if planned.key[0] in ("subjects", "cat"):
            runner.store.run(planned.key, planned.fingerprint, planned.work)
    config = yaml.safe_load((runner.store.path(*stage.key) / "stage_config.yaml").read_text())
    assert "ckpt_path" not in config
