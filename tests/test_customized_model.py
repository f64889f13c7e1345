"""Exported customized models: diffusers loads them, they generate what the trained module does,
the CAT adapter and CDL settings travel with them, and sampling writes one folder per prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from lightning.pytorch import Trainer
from PIL import Image

from lightning_cat.callbacks import SampleWriter
from lightning_cat.cat.adapter import add_cat_adapter, cat_lora_config, load_cat_vae, save_cat_adapter
from lightning_cat.datamodules import DreamBoothDataModule, PromptDataModule
from lightning_cat.diffusion import DiffusionComponents, build_pipeline, latent_distribution, load_vae
from lightning_cat.modules import DreamBoothModule, SamplingModule
from lightning_cat.sampling.generation import generate_images

PROMPTS = ["a photo of sks person", "a dslr portrait of sks person"]
STEPS = 2  # denoising steps: enough to exercise the whole pipeline


def fit(module, datamodule, steps, root):
    Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    ).fit(module, datamodule)


def sample(pipeline, prompts=PROMPTS, seeds=(0, 1), **options):
    return generate_images(
        pipeline, list(prompts), list(seeds), num_inference_steps=STEPS, height=64, width=64, **options
    )


def module_pipeline(module):
    """A pipeline over the trained module's own weights (the reference the export must reproduce)."""
    components = DiffusionComponents("tiny", module.tokenizer, module.text_encoder, module.vae, module.unet)
    return build_pipeline(components)


def base_pipeline(path, **components):
    pipeline = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, feature_extractor=None, requires_safety_checker=False, **components
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def cat_adapter_dir(tmp_path_factory):
    """A CAT adapter that is not the identity (lora_B perturbed)."""
    adapted = add_cat_adapter(load_vae("tiny"), cat_lora_config("both", rank=2))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return save_cat_adapter(adapted, tmp_path_factory.mktemp("cat") / "adapter")


@pytest.fixture(scope="module")
def lora_export(photos_dir, cat_adapter_dir, tmp_path_factory):
    """LoRA on UNet and text encoder (alpha != rank), trained on CAT latents with CDL on, exported."""
    root = tmp_path_factory.mktemp("lora")
    module = DreamBoothModule(
        finetune="lora",
        train_text_encoder=True,
        lora_rank=4,
        lora_alpha=8,
        learning_rate=1e-3,
        cat_adapter=str(cat_adapter_dir),
        cdl=True,
        output_dir=str(root / "model"),
    )
    fit(module, DreamBoothDataModule(str(photos_dir), resolution=64, batch_size=2), 2, root)
    return module.eval(), root / "model"


@pytest.fixture(scope="module")
def full_export(photos_dir, cat_adapter_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    module = DreamBoothModule(
        finetune="full",
        train_text_encoder=True,
        learning_rate=1e-4,
        cat_adapter=str(cat_adapter_dir),
        output_dir=str(root / "model"),
    )
    fit(module, DreamBoothDataModule(str(photos_dir), resolution=64, batch_size=2), 1, root)
    return module.eval(), root / "model"


def test_lora_export_loads_with_load_lora_weights(lora_export, tiny_model_path):
    module, folder = lora_export
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    pipeline = base_pipeline(tiny_model_path, vae=module.vae)  # the CAT decoder, as in the module's pipeline
    before = sample(pipeline)
    pipeline.load_lora_weights(str(folder))
    loaded = sample(pipeline)
    expected = sample(module_pipeline(module))
    assert torch.allclose(loaded, expected, atol=1e-4), (loaded - expected).abs().max()
    assert (loaded - before).abs().mean() > 1e-3  # the LoRA (UNet + text encoder) changes the images
    # SamplingModule rebuilds the same model from the folder alone (LoRA fused, CAT decoder applied).
    sampler = SamplingModule(
        str(folder), num_inference_steps=STEPS, cdl_inference_suffix=False, cdl_negative_prompt=False
    )
    assert torch.allclose(sampler(PROMPTS, [0, 1]), expected, atol=1e-4)
    assert torch.isfinite(loaded).all() and loaded.shape == (2, 3, 64, 64)


def test_export_records_the_training_setup(lora_export, cat_adapter_dir):
    _, folder = lora_export
    record = json.loads((folder / "customization.json").read_text())
    assert record["finetune"] == "lora" and record["pretrained_model_name_or_path"] == "tiny"
    assert record["lora"]["rank"] == 4 and record["lora"]["alpha"] == 8 and record["train_text_encoder"]
    assert record["cat_adapter"] == "cat_adapter" and (folder / "cat_adapter" / "adapter_config.json").is_file()
    assert record["cat_adapter_source"] == str(cat_adapter_dir.resolve())
    assert record["cdl"] == {
        "instance_suffix": True,
        "class_suffix": True,
        "inference_suffix": True,
        "negative_prompt": True,
        "noise_token": "bhj",
        "negative_prompt_text": "noisy, lowres, artifact, pattern",
    }
    assert record["instance_prompt"] == "a photo of sks person" and record["resolution"] == 64
    assert record["global_step"] == 2


def test_cat_adapter_encodes_training_latents_and_decodes_samples(lora_export, cat_adapter_dir, photos_dir):
    module, folder = lora_export
    images = DreamBoothDataModule(str(photos_dir), resolution=64).dataset.instance.load(0).unsqueeze(0)
    adapted, base = load_cat_vae("tiny", cat_adapter_dir), load_vae("tiny")
    with torch.no_grad():
        trained_on = latent_distribution(module.vae, images).mean
        assert torch.allclose(trained_on, latent_distribution(adapted, images).mean, atol=1e-5)
        assert (trained_on - latent_distribution(base, images).mean).abs().mean() > 1e-3
        sampler = SamplingModule(str(folder), num_inference_steps=STEPS)
        latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        decoded = sampler.vae.decode(latents).sample
        assert torch.allclose(decoded, adapted.decode(latents).sample, atol=1e-5)
        assert (decoded - base.decode(latents).sample).abs().mean() > 1e-3


def test_full_export_loads_with_from_pretrained(full_export, tiny_model_path):
    module, folder = full_export
    record = json.loads((folder / "customization.json").read_text())
    assert record["finetune"] == "full" and record["lora"] is None and record["cat_adapter"] == "cat_adapter"
    pipeline = base_pipeline(folder)
    trained = dict(module.unet.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in pipeline.unet.named_parameters())
    base = base_pipeline(tiny_model_path)
    # The folder's VAE is the base VAE; the CAT adapter sits beside it in cat_adapter/.
    assert all(torch.equal(p, dict(base.vae.named_parameters())[n]) for n, p in pipeline.vae.named_parameters())
    loaded = sample(pipeline)
    assert (loaded - sample(base)).abs().mean() > 1e-3
    with_cat = base_pipeline(folder, vae=module.vae)
    assert torch.allclose(sample(with_cat), sample(module_pipeline(module)), atol=1e-5)
    sampler = SamplingModule(str(folder), num_inference_steps=STEPS)  # applies the adapter itself
    assert torch.allclose(sampler(PROMPTS, [0, 1]), sample(module_pipeline(module)), atol=1e-5)


def predict(module, datamodule, output_dir, **writer_options):
    Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[SampleWriter(str(output_dir), grid_columns=2, **writer_options)],
    ).predict(module, datamodule, return_predictions=False)


def test_sampling_writes_prompt_folders_grid_and_index(lora_export, tmp_path):
    _, folder = lora_export
    sampler = SamplingModule(str(folder), num_inference_steps=STEPS, negative_prompt="blurry")
    prompts = PromptDataModule(
        ["a photo of {instance_token} {class}", "a dslr portrait of {instance_token} {class}"],
        images_per_prompt=3,
        batch_size=2,
    )
    out = tmp_path / "samples"
    predict(sampler, prompts, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "a_dslr_portrait_of_sks_person",
        "a_photo_of_sks_person",
        "grid.png",
        "samples.json",
    ]
    assert sorted(p.name for p in (out / "a_photo_of_sks_person").iterdir()) == [
        "0000-seed0.png",
        "0001-seed1.png",
        "0002-seed2.png",
    ]
    assert Image.open(out / "grid.png").size == (2 + 2 * 66, 2 + 2 * 66)  # 2 prompts x 2 columns of 64 px + padding
    index = json.loads((out / "samples.json").read_text())
    assert index["num_images"] == 6 and index["settings"]["customization"]["finetune"] == "lora"
    entry = index["prompts"][0]
    assert entry["prompt"] == "a photo of sks person"
    assert entry["sampling_prompt"] == "a photo of sks person, without bhj noisy pattern"
    assert entry["negative_prompt"] == "blurry, noisy, lowres, artifact, pattern"
    assert [f["seed"] for f in entry["files"]] == [0, 1, 2]

    # The saved image is the (prompt with CDL suffix, seed) image, whatever batch it was made in.
    alone = sampler(["a photo of sks person"], [1])[0]
    saved = np.asarray(Image.open(out / "a_photo_of_sks_person" / "0001-seed1.png")).astype(int)
    expected = ((alone.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(int)
    assert np.abs(saved - expected).max() <= 1

    with pytest.raises(FileExistsError, match="not empty"):
        predict(sampler, prompts, out)


def test_sampling_cdl_switches_override_the_record(lora_export):
    _, folder = lora_export
    sampler = SamplingModule(
        str(folder), num_inference_steps=STEPS, cdl_inference_suffix=False, cdl_negative_prompt=False
    )
    assert sampler.cdl.sampling_prompt("a photo of sks person") == "a photo of sks person"
    assert sampler.effective_negative_prompt is None
    recorded = SamplingModule(str(folder), num_inference_steps=STEPS)
    assert recorded.cdl.sampling_prompt("x") == "x, without bhj noisy pattern"


def test_base_model_samples_and_bad_options():
    sampler = SamplingModule("tiny", num_inference_steps=STEPS, scheduler="euler")
    assert sampler.record is None and sampler.resolution == 64 and not sampler.cdl.enabled
    assert type(sampler.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    assert sampler(["a photo of a dog"], [0]).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"SamplingModule: scheduler='heun' is not one of \["):
        SamplingModule("tiny", scheduler="heun")
    with pytest.raises(ValueError, match="SamplingModule: num_inference_steps must be >= 1"):
        SamplingModule("tiny", num_inference_steps=0)
