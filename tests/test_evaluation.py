"""Evaluation from folders: one table from the CLI, values equal direct computations, DDP-identical."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import MeanSquaredError

from lightning_cat.callbacks import GeneratedImageEvaluator, LatentDistortionCallback, ProtectedImageEvaluator
from lightning_cat.cli import main
from lightning_cat.datamodules import EvaluationDataModule, PairedImageDataModule
from lightning_cat.images import ImageTransform
from lightning_cat.metrics import FID, RandomFeatureExtractor, iter_image_batches
from lightning_cat.modules import EvaluationModule

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_eval_sets import write_evaluation_sets  # noqa: E402

CONFIGS = Path(__file__).parents[1] / "configs" / "eval"
ALL_METRICS = {
    "psnr",
    "ssim",
    "lpips",
    "clip_prompt_similarity",
    "clip_subject_probability",
    "fid",
    "clip_iqa",
    "clip_iqac",
    "fdfr",
    "brisque",
}
LATENT_DISTORTION = {"test/base/latent_mse_relative", "test/base/recon_psnr"}


@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory):
    return write_evaluation_sets(tmp_path_factory.mktemp("eval"))


def _data_args(sets) -> list[str]:
    return [
        "--data.clean_root",
        str(sets["clean"]),
        "--data.protected_root",
        str(sets["protected"]),
        "--data.generated_root",
        str(sets["generated"]),
    ]


def test_cli_prints_one_table_of_all_metrics(eval_sets, tmp_path, capsys):
    cli = main(
        ["test", "--config", str(CONFIGS / "metrics.tiny.yaml"), "--trainer.default_root_dir", str(tmp_path)]
        + _data_args(eval_sets)
    )
    out = capsys.readouterr().out
    assert out.count("Test metric") == 1
    for name in ALL_METRICS | LATENT_DISTORTION:
        assert name in out
    results = {k: v.item() for k, v in cli.trainer.callback_metrics.items()}
    assert set(results) == ALL_METRICS | LATENT_DISTORTION

    # PSNR equals the formula on the 64 px files; FID equals a direct computation; no face in 64 px noise.
    transform = ImageTransform(resolution=64)
    clean = torch.cat(list(iter_image_batches(eval_sets["clean"], transform)))
    protected = torch.cat(list(iter_image_batches(eval_sets["protected"], transform)))
    generated = torch.cat(list(iter_image_batches(eval_sets["generated"], transform)))
    mse = ((protected.double() - clean.double()) / 2).pow(2).flatten(1).mean(1)
    assert results["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), rel=1e-5)
    fid = FID(RandomFeatureExtractor())
    fid.update(clean, real=True)
    fid.update(generated)
    assert results["fid"] == pytest.approx(fid.compute().item(), rel=1e-4)
    assert results["fdfr"] == 1.0
    assert 0 < results["ssim"] < 1 and results["lpips"] > 0

    # latent distortion equals the callback run directly on the same folders
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[LatentDistortionCallback("tiny", keys=["latent_mse_relative", "recon_psnr"])],
    )
    (direct,) = trainer.test(EvaluationModule(), datamodule=_datamodule(eval_sets), verbose=False)
    assert set(direct) == LATENT_DISTORTION
    for key in LATENT_DISTORTION:
        assert results[key] == pytest.approx(direct[key], rel=1e-6)
    assert results["test/base/latent_mse_relative"] > 0


def test_missing_weights_fail_before_evaluation(eval_sets, tmp_path):
    with pytest.raises(FileNotFoundError, match="lpips_backbone_weights"):
        main(
            [
                "test",
                "--config",
                str(CONFIGS / "metrics.antidreambooth.sd21.yaml"),
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
            + _data_args(eval_sets)
            + ["--data.resolution", "64"]
        )
    with pytest.raises(ValueError, match="fid_weights"):
        GeneratedImageEvaluator(clip_iqa=False, clip_iqac=False)
    with pytest.raises(ValueError, match="clip_weights"):
        GeneratedImageEvaluator(fid_extractor="random")
    with pytest.raises(ValueError, match="ism=True needs face_embedder_weights"):
        GeneratedImageEvaluator(ism=True)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvaluationDataModule(clean_root=str(eval_sets["clean"]), resolution=64)


def _evaluators(**protected_options):
    return [
        ProtectedImageEvaluator(lpips=False, clip_backend="tiny", **protected_options),
        GeneratedImageEvaluator(fid_extractor="random", clip_backend="tiny", fdfr=True, brisque=True),
    ]


def _datamodule(sets) -> EvaluationDataModule:
    return EvaluationDataModule(
        clean_root=str(sets["clean"]),
        protected_root=str(sets["protected"]),
        generated_root=str(sets["generated"]),
        resolution=64,
        batch_size=2,
    )


def _test(sets, tmp_path, **trainer_options) -> dict[str, float]:
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=_evaluators(),
        **trainer_options,
    )
    (results,) = trainer.test(EvaluationModule(), datamodule=_datamodule(sets), verbose=False)
    return results


@pytest.mark.ddp
def test_two_processes_give_the_single_process_values(eval_sets, tmp_path):
    single = _test(eval_sets, tmp_path / "one", devices=1)
    double = _test(eval_sets, tmp_path / "two", devices=2, strategy="ddp_spawn")
    assert set(single) == ALL_METRICS - {"lpips"}
    for name, value in single.items():
        assert double[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_features_stay_fp32_under_autocast(eval_sets):
    generated = torch.cat(list(iter_image_batches(eval_sets["generated"], ImageTransform(resolution=64))))
    evaluator = GeneratedImageEvaluator(fid_extractor="random", clip_backend="tiny")
    evaluator.metrics["fid"].set_reference(torch.zeros(64), torch.eye(64), 10)
    values = []
    for dtype in (None, torch.bfloat16):
        for metric in evaluator.metrics.values():
            metric.reset()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            evaluator._batch_end({"generated": generated.to(dtype or torch.float32)}, None)
        values.append({name: metric.compute().item() for name, metric in evaluator.metrics.items()})
    reference = torch.cat([g.to(torch.bfloat16).float().unsqueeze(0) for g in generated])
    fid = FID(RandomFeatureExtractor())
    fid.set_reference(torch.zeros(64), torch.eye(64), 10)
    fid.update(reference)
    assert values[1]["fid"] == pytest.approx(fid.compute().item(), rel=1e-6)  # fp32 features of the bf16 images
    assert values[0]["clip_iqa"] == pytest.approx(values[1]["clip_iqa"], abs=1e-2)


class PlainModule(LightningModule):
    """Any module: its validation_step returns nothing, so the evaluator reads the batch."""

    def validation_step(self, batch, batch_idx):
        return None


def test_plug_in_metric_in_validate_of_any_module(photos_dir, image_folder, tmp_path):
    files = sorted(photos_dir.glob("*.png"))
    clean = image_folder(*files, name="clean")
    protected = tmp_path / "protected"
    protected.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for file in files:
        pixels = np.asarray(Image.open(file).convert("RGB"), dtype=np.int16)
        Image.fromarray(np.clip(pixels + rng.integers(-6, 7, pixels.shape), 0, 255).astype(np.uint8)).save(
            protected / file.name
        )
    datamodule = PairedImageDataModule(str(clean), str(protected), resolution=64, batch_size=2)
    evaluator = ProtectedImageEvaluator(
        lpips=False, ssim=False, clip_alignment=False, metrics={"pixel_mse": MeanSquaredError()}, prefix="val_"
    )
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[evaluator])
    (results,) = trainer.validate(PlainModule(), datamodule=datamodule, verbose=False)
    images = torch.stack([item["image"] for item in datamodule.dataset])
    cleans = torch.stack([item["clean"] for item in datamodule.dataset])
    assert set(results) == {"val_psnr", "val_pixel_mse"}
    assert results["val_pixel_mse"] == pytest.approx((images - cleans).pow(2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="'psnr' is used twice"):
        ProtectedImageEvaluator(lpips=False, clip_alignment=False, metrics={"psnr": MeanSquaredError()})
