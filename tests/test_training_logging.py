"""What the training stages log: scalars and images read back from TensorBoard's event files, CSV
without images, W&B-style ``log_image``, and DreamBooth validation samples that leave training unchanged."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import Logger

from lightning_cat.datamodules import DreamBoothDataModule, ImageFolderDataModule
from lightning_cat.modules import CATAdapterModule, DreamBoothModule, ProtectionModule

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _trainer(tmp_path, logger, **options):
    return Trainer(
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **options,
    )


def _events(logger: TensorBoardLogger):
    accumulator = event_accumulator.EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


class ImageRecorder(Logger):
    """A logger with W&B's ``log_image`` signature that keeps what it receives."""

    def __init__(self):
        super().__init__()
        self.images, self.metrics = [], []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, [image.shape for image in images], step))


def test_cat_logs_losses_learning_rate_and_reconstructions(two_photos, tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="cat")
    recorder = ImageRecorder()
    module = CATAdapterModule(lora_rank=4, learning_rate=1e-3, log_images_every_n_steps=2, num_log_images=2)
    data = ImageFolderDataModule(str(two_photos), resolution=32, batch_size=2)
    _trainer(tmp_path, [logger, recorder], max_steps=4).fit(module, data)
    events = _events(logger)
    assert {"train/loss", "train/lr"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("train/loss")) == 4
    lrs = [event.value for event in events.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]  # cosine
    images = events.Images("train/reconstructions")
    assert [image.step for image in images] == [1, 2, 4]  # after the first step, then every 2
    assert (images[0].width, images[0].height) == (2 * 32, 2 * 32)  # inputs above reconstructions
    assert [(key, step) for key, _, step in recorder.images] == [("train/reconstructions", s) for s in (1, 2, 4)]
    assert recorder.images[0][1] == [torch.Size([3, 64, 64])]


def test_csv_logger_gets_the_scalars_and_no_images(two_photos, tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    module = CATAdapterModule(lora_rank=4, log_images_every_n_steps=1)
    data = ImageFolderDataModule(str(two_photos), resolution=32, batch_size=2)
    _trainer(tmp_path, logger, max_steps=2).fit(module, data)
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert {"train/loss", "train/lr"} <= set(rows[0]) and sum(bool(r["train/loss"]) for r in rows) == 2
    assert sorted(p.name for p in Path(logger.log_dir).iterdir()) == ["hparams.yaml", "metrics.csv"]


def test_protection_logs_pgd_losses_budgets_and_examples(photos_dir, tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="protect")
    out = tmp_path / "protected"
    module = ProtectionModule(method="advdm_plus", output_dir=str(out), eps_255=8, alpha_255=2, steps=3)
    data = ImageFolderDataModule(str(photos_dir), resolution=32, batch_size=2, shuffle=False)
    _trainer(tmp_path, logger, max_epochs=1).fit(module, data)
    events = _events(logger)
    losses = events.Scalars("protect/pgd_loss")
    assert [event.step for event in losses] == list(range(1, 3 * 3 + 1))  # 3 batches x 3 PGD steps
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        (logged,) = events.Scalars(f"protect/linf_255/{Path(name).stem}")
        assert logged.value == pytest.approx(entry["linf_255"]) and 0 < logged.value <= 8
    (largest,) = events.Scalars("protect/linf_255_max")
    assert largest.value == pytest.approx(max(entry["linf_255"] for entry in manifest["files"].values()))
    examples = events.Images("protect/examples")
    assert len(examples) == 3 and (examples[0].width, examples[0].height) == (2 * 32, 3 * 32)


def _dreambooth(photos_dir, tmp_path, validation_prompt, logger):
    torch.manual_seed(0)
    module = DreamBoothModule(
        finetune="lora",
        lora_rank=4,
        learning_rate=1e-3,
        validation_prompt=validation_prompt,
        validation_every_n_steps=2,
        num_validation_images=2,
        validation_inference_steps=2,
        cdl=True,
    )
    class_dir = tmp_path / "class"
    if not class_dir.exists():
        class_dir.mkdir()
        for name in ("rocket", "camera"):
            shutil.copy(photos_dir / f"{name}.png", class_dir / f"class_{name}.png")
    data = DreamBoothDataModule(
        str(photos_dir), class_root=str(class_dir), num_class_images=2, resolution=32, batch_size=2, shuffle=True
    )
    trainer = _trainer(tmp_path, logger, max_steps=4)
    trainer.fit(module, data)
    return module, {n: p.detach().clone() for n, p in module.unet.named_parameters() if ".lora_" in n}


def test_dreambooth_validation_samples_are_logged_seeded_and_leave_training_unchanged(photos_dir, tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="dreambooth")
    module, with_samples = _dreambooth(photos_dir, tmp_path, "a photo of sks person", logger)
    events = _events(logger)
    assert {"train/loss", "train/loss_instance", "train/loss_prior", "train/lr"} <= set(events.Tags()["scalars"])
    samples = events.Images("val/samples")
    assert [image.step for image in samples] == [2, 4]
    assert (samples[0].width, samples[0].height) == (2 * 32, 32)
    # the same seeds give the same images (the sampler draws from its own generators)
    module.train()
    modes = [child.training for child in module.modules()]
    assert module.unet.training and not module.vae.training  # frozen parts stay in eval mode
    first, second = module.validation_samples(), module.validation_samples()
    assert torch.equal(first, second) and not torch.equal(first[0], first[1])
    assert [child.training for child in module.modules()] == modes  # every module's mode restored

    _, without = _dreambooth(photos_dir, tmp_path, None, TensorBoardLogger(str(tmp_path), name="plain"))
    assert with_samples.keys() == without.keys()
    assert all(torch.equal(with_samples[name], without[name]) for name in with_samples)
    assert any(p.abs().sum() > 0 for n, p in without.items() if ".lora_B." in n)


def test_validation_options_are_checked():
    with pytest.raises(ValueError, match="validation_every_n_steps must be >= 1, got 0"):
        DreamBoothModule(validation_prompt="a photo", validation_every_n_steps=0)
    with pytest.raises(ValueError, match="log_images_every_n_steps must be >= 1 or None, got 0"):
        CATAdapterModule(lora_rank=4, log_images_every_n_steps=0)
