"""CAT adapter plumbing: targets per variant, identity at init, peft-format export and reload."""

from __future__ import annotations

import pytest
import torch

from lightning_cat.cat.adapter import add_cat_adapter, cat_lora_config, load_cat_vae, save_cat_adapter
from lightning_cat.diffusion import load_vae


def _adapted_layers(model):
    return sorted(name for name, module in model.named_modules() if getattr(module, "lora_A", None))


@pytest.mark.parametrize(("variant", "count"), [("both", 30), ("encoder", 13), ("decoder", 17)])
def test_variant_targets(variant, count):
    layers = _adapted_layers(add_cat_adapter(load_vae("tiny"), cat_lora_config(variant, rank=2)))
    assert len(layers) == count
    if variant != "both":
        assert all(f".{variant}." in name for name in layers)
    assert not any(name.endswith(("conv_in", "conv_out", "conv_shortcut", "quant_conv")) for name in layers)


def test_gaussian_init_is_identity_and_export_reloads(tmp_path):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    base = load_vae("tiny")
    adapted = add_cat_adapter(load_vae("tiny"), cat_lora_config("both", rank=4))
    with torch.no_grad():
        assert torch.equal(adapted.encode(images).latent_dist.mean, base.encode(images).latent_dist.mean)
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
        expected = adapted.decode(adapted.encode(images).latent_dist.mean).sample
    save_cat_adapter(adapted, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    unmerged = load_cat_vae("tiny", tmp_path / "adapter", merge=False)
    merged = load_cat_vae("tiny", tmp_path / "adapter")
    saved = {n: p for n, p in adapted.named_parameters() if "lora_" in n}
    reloaded = {n: p for n, p in unmerged.named_parameters() if "lora_" in n}
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[n], reloaded[n]) for n in saved)
    with torch.no_grad():
        assert torch.allclose(unmerged.decode(unmerged.encode(images).latent_dist.mean).sample, expected, atol=5e-5)
        assert torch.allclose(merged.decode(merged.encode(images).latent_dist.mean).sample, expected, atol=1e-4)
    assert not any(p.requires_grad for p in merged.parameters())
    with pytest.raises(FileExistsError, match="already exists"):
        save_cat_adapter(adapted, tmp_path / "adapter")


def test_bad_adapter_options(tmp_path):
    with pytest.raises(ValueError, match="unknown CAT variant 'middle'"):
        cat_lora_config("middle")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        cat_lora_config(rank=0)
    with pytest.raises(FileNotFoundError, match="not a CAT adapter folder"):
        load_cat_vae("tiny", tmp_path)
