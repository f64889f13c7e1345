"""CATAdapterModule: only LoRA trains, step 0 is the base VAE, the loss falls, export reloads with
peft bit-exactly, clipping clips, precision, clean images unused, bad options fail early."""

from __future__ import annotations

import math
import os

import pytest
import torch
from peft import PeftModel
from training import first_batch, quiet_trainer  # tests/training.py

from lightning_cat.datamodules import ImageFolderDataModule
from lightning_cat.diffusion import load_vae
from lightning_cat.modules import CATAdapterModule


def test_fit_trains_only_lora_and_exports_a_peft_adapter(two_photos, tmp_path):
    batch, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4, learning_rate=1e-3, output_dir=str(tmp_path / "adapter"))
    base = load_vae("tiny")
    images = batch["image"]
    with torch.no_grad():
        # gaussian init: the adapted VAE is the base VAE at step 0
        assert torch.equal(module.vae.encode(images).latent_dist.mean, base.encode(images).latent_dist.mean)
        assert torch.equal(
            module.vae.decode(base.encode(images).latent_dist.mean).sample,
            base.decode(base.encode(images).latent_dist.mean).sample,
        )
        loss_before = module.cat_loss(module.vae, images).loss.item()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}

    quiet_trainer(tmp_path, max_steps=12).fit(module, data)

    changed = {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert all("lora_B" not in n or n in changed for n in before)  # every LoRA B factor learned something
    with torch.no_grad():
        loss_after = module.cat_loss(module.vae, images).loss.item()
    print(f"CAT loss on the fixed protected batch: {loss_before:.5f} -> {loss_after:.5f} after 12 steps")
    assert loss_after < 0.95 * loss_before

    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o777 & ~umask
    reloaded = PeftModel.from_pretrained(load_vae("tiny"), tmp_path / "adapter")
    saved = {n: p for n, p in module.vae.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)


def test_decoder_variant_keeps_encoder_latents_exactly(two_photos, tmp_path):
    batch, data = first_batch(two_photos)
    module = CATAdapterModule(adapter_variant="decoder", lora_rank=4, learning_rate=1e-2)
    quiet_trainer(tmp_path, max_steps=2).fit(module, data)
    base = load_vae("tiny")
    with torch.no_grad():
        latents = base.encode(batch["image"]).latent_dist.mean
        assert torch.equal(module.vae.encode(batch["image"]).latent_dist.mean, latents)
        assert not torch.allclose(module.vae.decode(latents).sample, base.decode(latents).sample)


@pytest.mark.parametrize("max_grad_norm", [None, 1e-4])
def test_gradient_clipping_only_when_asked(two_photos, tmp_path, max_grad_norm):
    _, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4)
    norms = []

    def record(optimizer, *args, **kwargs):  # a step post-hook sees the gradients the step used
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer = quiet_trainer(tmp_path, max_steps=2, gradient_clip_val=max_grad_norm)
    original = module.configure_optimizers

    def configure_optimizers():
        config = original()
        config["optimizer"].register_step_post_hook(record)
        return config

    module.configure_optimizers = configure_optimizers
    trainer.fit(module, data)
    assert len(norms) == 2
    if max_grad_norm is None:
        assert min(norms) > 1e-3  # unclipped gradients are far above the clipping threshold used below
    else:
        assert max(norms) <= max_grad_norm * (1 + 1e-4)


def test_bf16_mixed_keeps_lora_in_fp32(two_photos, tmp_path):
    _, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4, output_dir=str(tmp_path / "adapter"))
    quiet_trainer(tmp_path, max_steps=1, precision="bf16-mixed").fit(module, data)
    frozen = {p.dtype for n, p in module.vae.named_parameters() if "lora_" not in n}
    trainable = {p.dtype for n, p in module.vae.named_parameters() if "lora_" in n}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert all(math.isfinite(p.sum().item()) for n, p in module.vae.named_parameters() if "lora_" in n)
    reloaded = PeftModel.from_pretrained(load_vae("tiny"), tmp_path / "adapter")
    assert {p.dtype for n, p in reloaded.named_parameters() if "lora_" in n} == {torch.float32}


def test_training_step_never_reads_clean_images(two_photos):
    batch, _ = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4)
    batch["clean"] = torch.full_like(batch["image"], float("nan"))
    module.log_dict = lambda *args, **kwargs: None  # no trainer attached
    assert torch.isfinite(module.training_step(batch, 0))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (
            {"adapter_variant": "middle"},
            ValueError,
            r"adapter_variant='middle' is not one of \['both', 'encoder', 'decoder'\]",
        ),
        ({"lora_rank": 0}, ValueError, "lora_rank must be >= 1"),
        ({"loss": "lpips"}, ValueError, "needs lpips_backbone_weights"),
        ({"lr_scheduler": "step"}, ValueError, "lr_scheduler='step' is not one of"),
        ({"adam_beta1": 1.0}, ValueError, r"adam_beta1 must be in \[0, 1\)"),
        ({"lora_rank": 2.5}, ValueError, "lora_rank=2.5 is not an integer"),
    ],
)
def test_bad_options_fail_before_the_model_loads(monkeypatch, options, error, match):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("lightning_cat.modules.base.load_components", no_loading)
    with pytest.raises(error, match=match):
        CATAdapterModule(**options)


def test_existing_output_dir_is_refused(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        CATAdapterModule(lora_rank=4, output_dir=str(tmp_path / "adapter"))


def test_lpips_loss_trains(two_photos, tmp_path):
    batch, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4, loss="mse+lpips", lpips_random_backbone=True, learning_rate=1e-3)
    with torch.no_grad():
        before = module.cat_loss(module.vae, batch["image"])
    assert before.mse is not None and before.lpips is not None
    assert torch.isclose(before.loss, before.mse + before.lpips)
    quiet_trainer(tmp_path, max_steps=3).fit(module, data)
    with torch.no_grad():
        assert module.cat_loss(module.vae, batch["image"]).loss < before.loss
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    kept = checkpoint["state_dict"].keys()
    assert kept and all("lora_" in key for key in kept)  # frozen VAE and LPIPS weights stay out of checkpoints


def test_non_finite_loss_stops_training_and_writes_nothing(two_photos, tmp_path):
    module = CATAdapterModule(lora_rank=2, learning_rate=1e30, output_dir=str(tmp_path / "adapter"))
    data = ImageFolderDataModule(str(two_photos), resolution=64, batch_size=2)
    with pytest.raises(FloatingPointError, match=r"CATAdapterModule: loss is (nan|inf) at step \d+"):
        quiet_trainer(tmp_path, 50).fit(module, data)
    assert not (tmp_path / "adapter").exists()
