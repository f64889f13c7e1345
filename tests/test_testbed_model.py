"""The trained ``testbed`` model: it loads by name like any checkpoint, its samples are images, and
DreamBooth-LoRA on a held-out subject brings samples closer to that subject than the base model.

The two claims (fixed before the model was trained, see benchmarks/testbed/make_testbed_model.py):
(1) clean DreamBooth customization (LoRA and full, the protocol's step counts) beats the base model
on the subject metric (nearest-subject SSIM), judged on seeds no setting was chosen on;
(2) samples are images, not noise: mean neighbouring-pixel correlation >= 0.7 AND mean BRISQUE
<= 60. The correlation rules out pixel noise (the subject's photographs give 0.90-0.95 at 64 px,
the random ``tiny`` model's coloured noise 0.49, i.i.d. noise 0); BRISQUE rules out what the
correlation lets through: the smooth saturated blobs of an untrained UNet decoded by this trained
VAE (correlation 0.83, BRISQUE 155) and i.i.d. noise (88-100); the subject's photographs give
-4 to 46 (the tiny model's noise 14-19, which the correlation rejects).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_cat.diffusion import (
    TESTBED_MODELS,
    build_pipeline,
    check_model_name,
    load_components,
    resolve_model_path,
    testbed_model_path,
)
from lightning_cat.metrics import BRISQUE, NearestSubjectSimilarity, nearest_subject_similarity, pixel_correlation
from lightning_cat.sampling.generation import generate_images

ROOT = Path(__file__).resolve().parents[1]
SUBJECT = ("skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:rocket")
NOT_NOISE = 0.7  # minimum mean pixel correlation
MAX_BRISQUE = 60.0  # maximum mean BRISQUE
SEEDS = list(range(4))
#: The customization claim is judged on seeds never used while its settings were chosen (the
#: diagnostic runs that set the protocol's step counts sampled seeds 0-3).
CLAIM_SEEDS = list(range(100, 108))


def _subject(folder: Path) -> torch.Tensor:
    from lightning_cat.experiment.subjects import materialize_subject
    from lightning_cat.images import ImageTransform
    from lightning_cat.metrics.folders import iter_image_batches

    folder.mkdir(parents=True, exist_ok=True)
    materialize_subject(list(SUBJECT), 80, folder)
    transform = ImageTransform(resolution=64, crop="center", small_images="upscale")
    return torch.cat(list(iter_image_batches(folder / "images", transform)))


def _assert_images_not_noise(images: torch.Tensor, what: str) -> None:
    brisque = BRISQUE()
    brisque.update(images)
    correlation, score = pixel_correlation(images).mean().item(), brisque.compute().item()
    assert correlation >= NOT_NOISE and score <= MAX_BRISQUE, (what, correlation, score)


def _samples(components, prompt: str, seeds: list[int] = SEEDS) -> torch.Tensor:
    pipeline = build_pipeline(components)
    return generate_images(pipeline, [prompt] * len(seeds), seeds, num_inference_steps=25, guidance_scale=7.5)


def test_testbed_resolves_to_the_packaged_folder_and_loads_in_fp32():
    folder = testbed_model_path()
    assert TESTBED_MODELS == ("testbed",)
    assert resolve_model_path("testbed") == str(folder)
    assert folder.parent == ROOT / "lightning_cat" / "diffusion"
    check_model_name("testbed")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 30 * 2**20, size
    components = load_components("testbed")
    for part in (components.text_encoder, components.vae, components.unet):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert components.tokenizer.vocab_size == 49408
    assert components.tokenizer("a photo of sks person").input_ids[0] == 49406
    assert components.prediction_type == "epsilon"
    latents = components.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 16, 16)
    record = json.loads((folder / "testbed.json").read_text())
    assert not set(record["held_out"]) & {s.split(":")[1] for s in record["sources"]}
    assert components.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])


def test_unknown_testbed_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown testbed model 'big'.*\['testbed'\]"):
        testbed_model_path("big")


def test_pixel_correlation_separates_photographs_from_noise(tmp_path):
    subject = _subject(tmp_path)
    assert pixel_correlation(subject).min() > 0.85
    noise = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert pixel_correlation(noise).abs().max() < 0.05
    assert pixel_correlation(torch.zeros(1, 3, 8, 8)).item() == 0.0


def test_nearest_subject_similarity_finds_the_matching_image(tmp_path):
    subject = _subject(tmp_path)
    ssim = nearest_subject_similarity(subject.flip(0), subject)
    assert torch.allclose(ssim, torch.ones(4, dtype=ssim.dtype))
    assert math.isinf(nearest_subject_similarity(subject[:1], subject, "psnr").item())
    shifted = nearest_subject_similarity(subject.roll(8, -1), subject)
    assert (shifted < 0.9).all()
    metric = NearestSubjectSimilarity("psnr")
    with pytest.raises(RuntimeError, match="set_reference"):
        metric.update(subject)
    with pytest.raises(ValueError, match="'ssim' or 'psnr'"):
        NearestSubjectSimilarity("lpips")
    with pytest.raises(ValueError, match=r"\(32, 32\) px but the subject images are \(64, 64\)"):
        nearest_subject_similarity(subject[:, :, :32, :32], subject)


def test_base_model_samples_are_images_not_noise():
    components = load_components("testbed")
    for prompt in ("a photo of person", "a photo of a motorcycle"):
        _assert_images_not_noise(_samples(components, prompt), prompt)


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_customization_beats_the_base_model_on_the_subject(tmp_path, finetune):
    from lightning_cat.cli import main
    from lightning_cat.customization.export import load_customized_components

    subject = _subject(tmp_path / "subject")
    out = tmp_path / finetune
    main(
        [
            "fit",
            "--config",
            str(ROOT / f"configs/dreambooth/{finetune}.testbed.yaml"),
            "--data.instance_root",
            str(tmp_path / "subject" / "images"),
            "--data.class_root",
            str(tmp_path / "class"),
            "--model.output_dir",
            str(out),
            "--trainer.default_root_dir",
            str(tmp_path / "logs"),
            "--trainer.logger",
            "false",
        ]
    )
    prompt = "a photo of sks person"
    base = _samples(load_components("testbed"), prompt, CLAIM_SEEDS)
    customized = _samples(load_customized_components(str(out))[0], prompt, CLAIM_SEEDS)
    base_score = nearest_subject_similarity(base, subject).mean().item()
    customized_score = nearest_subject_similarity(customized, subject).mean().item()
    print(f"{finetune}: nearest-subject SSIM customized {customized_score:.4f}, base {base_score:.4f}")
    assert customized_score > base_score, (customized_score, base_score)
    _assert_images_not_noise(customized, f"{finetune} samples")


@pytest.mark.parametrize("name", ["testbed", "demo"])
def test_testbed_experiments_plan_on_the_testbed_model(name):
    from lightning_cat.experiment import ExperimentRunner, load_experiment_config

    config = load_experiment_config(ROOT / "configs/experiment" / f"{name}.yaml")
    assert config.model == "testbed"
    evaluate = [s for s in ExperimentRunner(config).plan() if s.key[0] == "evaluate"]
    protections = {s.key[2] for s in evaluate}
    if name == "testbed":  # clean + 4 methods x eps 8 and 16, x 5 defenses, and the base model
        assert len(protections) == 9 and len(evaluate) == 46
    else:  # clean, AdvDM(+), AdvDM(+) purified with CDL, and the base model
        assert {(s.key[2], s.key[3], s.key[4]) for s in evaluate} == {
            ("clean", "none", "lora"),
            ("advdm_plus", "none", "lora"),
            ("advdm_plus", "purify-tv+cdl", "lora"),
            ("clean", "none", "base"),
        }


def test_every_testbed_file_is_package_data():
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = patterns["lightning_cat.diffusion"]
    files = [
        f.relative_to(testbed_model_path().parent).as_posix() for f in testbed_model_path().rglob("*") if f.is_file()
    ]
    assert {"testbed_model/unet/diffusion_pytorch_model.safetensors", "testbed_model/DATA_CARD.md"} <= set(files)
    missing = [
        f for f in files if not any(fnmatch.fnmatchcase(f, p) and f.count("/") == p.count("/") for p in patterns)
    ]
    assert not missing
