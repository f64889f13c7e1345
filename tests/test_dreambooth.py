"""DreamBoothModule on the tiny model: what trains, the loss, prior rows, latent caching, class images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from PIL import Image

from lightning_cat.customization import dreambooth_loss, dreambooth_rows
from lightning_cat.datamodules import DreamBoothDataModule
from lightning_cat.diffusion import (
    LatentCache,
    encode_prompts,
    latent_distribution,
    load_components,
    sample_noise_and_timesteps,
    scale_latents,
)
from lightning_cat.modules import DreamBoothModule


class LossRecorder(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def fit(module, datamodule, steps, tmp_path, callbacks=()):
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule)
    return trainer


@pytest.fixture(scope="module")
def class_dir(photos_dir, tmp_path_factory):
    """Three ready-made class images (so these tests need no generation)."""
    folder = tmp_path_factory.mktemp("class")
    for name in ("coffee", "rocket", "camera"):
        shutil.copy(photos_dir / f"{name}.png", folder / f"class_{name}.png")
    return folder


def datamodule(photos_dir, class_dir=None, **options):
    options = {"resolution": 64, "batch_size": 2, "shuffle": False, **options}
    if class_dir is not None:
        options.update(class_root=str(class_dir), num_class_images=3)
    return DreamBoothDataModule(str(photos_dir), **options)


def first_batch(dm):
    return next(iter(dm.train_dataloader()))


def fixed_batch_loss(module, batch, repeats=4):
    """The DreamBooth loss of ``batch`` under fixed posterior samples, noise and timesteps."""
    rows = dreambooth_rows(batch)
    generator = torch.Generator().manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        posterior = latent_distribution(module.vae, rows.images)
        embeddings = module.prompt_embeddings(module.training_prompts(rows.prompts, rows.num_instance))
        for _ in range(repeats):
            latents = scale_latents(module.vae, posterior.sample(generator))
            noise, timesteps = sample_noise_and_timesteps(module.noise_scheduler, latents, generator=generator)
            total += dreambooth_loss(
                module.unet,
                module.noise_scheduler,
                latents,
                embeddings,
                num_instance=rows.num_instance,
                noise=noise,
                timesteps=timesteps,
            ).loss.item()
    return total / repeats


def test_full_finetune_lowers_the_loss_on_a_fixed_batch(photos_dir, class_dir, tmp_path):
    dm = datamodule(photos_dir, class_dir)
    module = DreamBoothModule(finetune="full", train_text_encoder=True, learning_rate=1e-3)
    batch = first_batch(dm)
    before = fixed_batch_loss(module, batch)
    fit(module, dm, 3, tmp_path)
    after = fixed_batch_loss(module.eval(), batch)
    assert after < before, (before, after)
    base = load_components("tiny", parts=["vae", "text_encoder"])
    text = dict(module.text_encoder.named_parameters())
    assert any(not torch.equal(p, text[n]) for n, p in base.text_encoder.named_parameters())  # text encoder trained
    assert all(torch.equal(p, dict(module.vae.named_parameters())[n]) for n, p in base.vae.named_parameters())


def test_lora_changes_only_lora_weights(photos_dir, tmp_path):
    module = DreamBoothModule(finetune="lora", lora_rank=4, train_text_encoder=True, learning_rate=1e-3)
    trainer = fit(module, datamodule(photos_dir), 3, tmp_path)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)  # frozen weights stay out
    base = load_components("tiny", parts=["unet", "text_encoder", "vae"])
    for part in ("unet", "text_encoder", "vae"):
        trained = {n.replace(".base_layer", ""): p for n, p in getattr(module, part).named_parameters()}
        lora = {n: p for n, p in trained.items() if ".lora_" in n}
        assert bool(lora) == (part != "vae")
        for name, parameter in getattr(base, part).named_parameters():
            assert torch.equal(parameter, trained[name]), f"{part}.{name} changed"
        assert all(p.abs().sum() > 0 for n, p in lora.items() if ".lora_B." in n)  # B starts at 0: it trained
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_prior_rows_are_in_the_batch_and_weighted(photos_dir, class_dir, tmp_path):
    dm = datamodule(photos_dir, class_dir)
    rows = dreambooth_rows(first_batch(dm))
    assert rows.images.shape == (4, 3, 64, 64) and rows.num_instance == 2
    assert rows.prompts == ["a photo of sks person"] * 2 + ["a photo of person"] * 2
    assert rows.keys[2].endswith("class_camera.png")  # class files sorted: camera, coffee, rocket
    assert torch.equal(rows.images[2], dm.class_images[0]["image"])

    module = DreamBoothModule(prior_loss_weight=0.5, lora_rank=4)
    trainer = fit(module, dm, 1, tmp_path)
    logged = trainer.callback_metrics
    assert logged["train/loss_prior"] > 0
    expected = logged["train/loss_instance"] + 0.5 * logged["train/loss_prior"]
    assert torch.allclose(logged["train/loss"], expected)


def test_latent_cache_gives_the_posterior_of_encoding(photos_dir):
    vae = load_components("tiny", parts=["vae"]).vae
    rows = dreambooth_rows(first_batch(datamodule(photos_dir, batch_size=3)))
    cache = LatentCache()
    first = cache.get(vae, rows.images[:2], rows.keys[:2])
    both = cache.get(vae, rows.images, rows.keys)  # encodes only the third image
    assert len(cache) == 3 and torch.equal(both.mean[:2], first.mean)
    with torch.no_grad():
        direct = latent_distribution(vae, rows.images)
        expected = vae.encode(rows.images).latent_dist.sample(torch.Generator().manual_seed(0))
    # Encoding a sub-batch differs from the full batch only by float kernel noise (~1e-6).
    assert torch.allclose(both.mean, direct.mean, atol=1e-5) and torch.allclose(both.logvar, direct.logvar, atol=1e-5)
    assert torch.allclose(both.sample(torch.Generator().manual_seed(0)), expected, atol=1e-5)


def test_cached_latents_train_like_encoding_every_step(photos_dir, class_dir, tmp_path):
    runs = {}
    for cache in (True, False):
        torch.manual_seed(0)
        module = DreamBoothModule(lora_rank=4, learning_rate=1e-3, cache_latents=cache)
        calls = []
        module.vae.encoder.register_forward_hook(lambda *args, calls=calls: calls.append(args[1][0].shape[0]))
        recorder = LossRecorder()
        fit(module, datamodule(photos_dir, class_dir), 4, tmp_path, [recorder])
        runs[cache] = (torch.stack(recorder.losses), sum(calls), len(module.latent_cache))
    cached, every_step = runs[True], runs[False]
    rows_seen = 4 + 4 + 2 + 4  # 5 instance images in batches of 2 (the third has 1), each with as many class rows
    assert every_step[1] == rows_seen and every_step[2] == 0
    assert cached[1] == 5 + 3 and cached[2] == 8  # each of 5 instance + 3 class images encoded once
    assert torch.allclose(cached[0], every_step[0], rtol=1e-5, atol=1e-6), (cached[0], every_step[0])


def test_random_augmentation_turns_caching_off(photos_dir, tmp_path):
    module = DreamBoothModule(lora_rank=4)
    with pytest.warns(UserWarning, match="cache_latents is on but"):
        fit(module, datamodule(photos_dir, hflip=True), 1, tmp_path)
    assert len(module.latent_cache) == 0


def test_v_prediction_model_trains_on_velocity(photos_dir):
    module = DreamBoothModule("tiny-v", lora_rank=4)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    assert module.noise_scheduler.config.prediction_type == "v_prediction"
    batch = first_batch(datamodule(photos_dir))
    torch.manual_seed(7)
    with torch.no_grad():
        loss = module.training_step(batch, 0)
    torch.manual_seed(7)  # replay the step's draws: posterior sample, noise, timesteps
    with torch.no_grad():
        latents = scale_latents(module.vae, latent_distribution(module.vae, batch["image"]).sample())
        noise, timesteps = sample_noise_and_timesteps(module.noise_scheduler, latents)
        embeddings = encode_prompts(module.tokenizer, module.text_encoder, batch["prompt"])
        noisy = module.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = module.unet(noisy, timesteps, embeddings).sample
    velocity = module.noise_scheduler.get_velocity(latents, noise, timesteps)
    assert torch.allclose(loss, F.mse_loss(prediction, velocity), rtol=1e-5)
    assert not torch.allclose(loss, F.mse_loss(prediction, noise), rtol=1e-2)


def test_class_images_generated_once_seeded_and_reused(photos_dir, tmp_path):
    class_root = tmp_path / "class"
    class_root.mkdir()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(class_root / "class_00000.png")  # a user-supplied image
    module = DreamBoothModule(lora_rank=4, class_generation_steps=2, class_generation_batch_size=2)
    calls = []
    original = module.generate_class_images
    other = tmp_path / "other"  # the image that will become class_00002, made alone and before any training
    original("a photo of person", 1, str(other), start_index=2)
    module.generate_class_images = lambda **kwargs: calls.append(kwargs) or original(**kwargs)
    options = {"class_root": str(class_root), "num_class_images": 3, "resolution": 64, "batch_size": 2}
    fit(module, DreamBoothDataModule(str(photos_dir), **options), 1, tmp_path)
    assert [c["num_images"] for c in calls] == [2]
    files = sorted(p.name for p in class_root.iterdir())
    assert files == ["class_00000.png", "class_00001.png", "class_00002.png"]
    assert all(Image.open(class_root / f).size == (64, 64) for f in files)
    pixels = {f: np.asarray(Image.open(class_root / f)) for f in files[1:]}

    again = DreamBoothDataModule(str(photos_dir), **options)
    assert again.missing_class_images == 0
    fit(module, again, 2, tmp_path)  # reuses the folder: no second generation
    assert len(calls) == 1

    # Same seed, so the same image; made alone instead of in a batch of 2, CPU kernels may round
    # differently (measured: at most 1 level on <0.01% of values).
    alone = np.asarray(Image.open(other / "class_00002.png")).astype(int)
    assert np.abs(alone - pixels["class_00002.png"]).max() <= 1
    assert np.abs(alone - pixels["class_00001.png"]).mean() > 10  # another seed, another image


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"finetune": "partial"}, r"DreamBoothModule: finetune='partial' is not one of \['full', 'lora'\]"),
        ({"lr_scheduler": "cyclic"}, "DreamBoothModule: lr_scheduler='cyclic' is not one of"),
        ({"lora_rank": 0}, "DreamBoothModule: lora_rank must be >= 1"),
        ({"learning_rate": 0}, "DreamBoothModule: learning_rate must be > 0"),
        ({"prior_loss_weight": -1}, "DreamBoothModule: prior_loss_weight must be >= 0"),
        ({"cdl_noise_token": "two words"}, "noise_token must be one word"),
    ],
)
def test_bad_options_fail_before_loading(options, message, monkeypatch):
    monkeypatch.setattr(DreamBoothModule, "load_pretrained", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match=message):
        DreamBoothModule(**options)


def test_existing_output_and_missing_adapter_fail_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(DreamBoothModule, "load_pretrained", lambda *a: pytest.fail("model loaded"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="output_dir .* not empty"):
        DreamBoothModule(output_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="cat_adapter .* is not a CAT adapter folder"):
        DreamBoothModule(cat_adapter=str(tmp_path))


class DtypeProbe(Callback):
    def on_train_start(self, trainer, pl_module):
        self.dtypes = {
            "unet_base": pl_module.unet.conv_in.weight.dtype,
            "vae": pl_module.vae.encoder.conv_in.weight.dtype,
            "text_encoder": pl_module.text_encoder.get_input_embeddings().weight.dtype,
            "lora": {p.dtype for p in pl_module.trainable_parameters(pl_module.unet)},
        }


def test_bf16_mixed_casts_frozen_weights_only(photos_dir, tmp_path):
    from safetensors.torch import load_file

    module = DreamBoothModule(lora_rank=4, output_dir=str(tmp_path / "model"))
    probe, recorder = DtypeProbe(), LossRecorder()
    Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[probe, recorder],
    ).fit(module, datamodule(photos_dir))
    assert probe.dtypes == {
        "unet_base": torch.bfloat16,
        "vae": torch.bfloat16,
        "text_encoder": torch.bfloat16,
        "lora": {torch.float32},
    }
    assert torch.isfinite(recorder.losses[0])
    weights = load_file(tmp_path / "model" / "pytorch_lora_weights.safetensors")
    assert weights and all(w.dtype == torch.float32 for w in weights.values())


def test_checkpointing_snr_and_warmup_schedule(photos_dir, tmp_path):
    module = DreamBoothModule(
        lora_rank=4,
        train_text_encoder=True,
        learning_rate=1e-3,
        text_encoder_learning_rate=2e-3,
        gradient_checkpointing=True,
        snr_gamma=5.0,
        lr_scheduler="linear",
        lr_warmup_steps=2,
    )
    assert module.unet.is_gradient_checkpointing and module.text_encoder.is_gradient_checkpointing
    recorder, rates = LossRecorder(), []

    class LearningRates(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    fit(module, datamodule(photos_dir), 3, tmp_path, [recorder, LearningRates()])
    # Linear warm-up over 2 of 3 steps: 0, 1/2, 1 times each group's rate (UNet, text encoder).
    assert rates == [pytest.approx([0.0, 0.0]), pytest.approx([5e-4, 1e-3]), pytest.approx([1e-3, 2e-3])]
    assert all(torch.isfinite(loss) for loss in recorder.losses)
    text_b = [p for n, p in module.text_encoder.named_parameters() if ".lora_B." in n]
    assert text_b and all(p.abs().sum() > 0 for p in text_b)  # gradients flowed through checkpointed layers


def test_8bit_adam_trains_the_full_unet(photos_dir, class_dir, tmp_path):
    # Liu et al.'s DreamBooth: bitsandbytes' 8-bit AdamW (it runs on the CPU too).
    bitsandbytes = pytest.importorskip("bitsandbytes")
    dm = datamodule(photos_dir, class_dir)
    module = DreamBoothModule(finetune="full", learning_rate=1e-3, optimizer="adamw_8bit")
    batch = first_batch(dm)
    before = fixed_batch_loss(module, batch)
    trainer = fit(module, dm, 3, tmp_path)
    assert isinstance(trainer.optimizers[0], bitsandbytes.optim.AdamW8bit)
    assert fixed_batch_loss(module.eval(), batch) < before


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(monkeypatch):
    import builtins

    from lightning_cat.optimization import adamw

    real_import = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "bitsandbytes" else real_import(name, *a, **k)
        ),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install bitsandbytes"):
        adamw([{"params": [torch.nn.Parameter(torch.zeros(1))]}], "adamw_8bit")
