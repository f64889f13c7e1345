"""LatentDistortion: equality with a direct computation, batching invariance, reference VAE, errors."""

from __future__ import annotations

import pytest
import torch

from lightning_cat.cat.adapter import add_cat_adapter, cat_lora_config
from lightning_cat.diffusion import load_vae
from lightning_cat.metrics import LatentDistortion


@pytest.fixture(scope="module")
def pairs():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1
    protected = (clean + 0.1 * torch.randn(clean.shape, generator=generator)).clamp(-1, 1)
    return protected, clean


def _reference(vae, reference, protected, clean):
    """Straight from METHODS.md §2, per image, without the metric's bookkeeping."""
    with torch.no_grad():
        mu_a, mu = vae.encode(protected).latent_dist.mean, vae.encode(clean).latent_dist.mean
        mu_ref = reference.encode(clean).latent_dist.mean
        rec_a = vae.decode(mu_a).sample.clamp(-1, 1)
        rec = vae.decode(mu).sample.clamp(-1, 1)
    psnr = lambda a, b: (10 * torch.log10(4 / (a - b).pow(2).mean(dim=(1, 2, 3)))).mean()  # noqa: E731
    return {
        "latent_mse": (mu_a - mu).pow(2).mean(),
        "latent_mse_relative": (mu_a - mu).pow(2).mean() / mu.pow(2).mean(),
        "latent_mse_vs_reference": (mu_a - mu_ref).pow(2).mean(),
        "latent_mse_vs_reference_relative": (mu_a - mu_ref).pow(2).mean() / mu_ref.pow(2).mean(),
        "recon_mse_self": (rec_a - protected).pow(2).mean(),
        "recon_mse": (rec_a - clean).pow(2).mean(),
        "clean_recon_mse": (rec - clean).pow(2).mean(),
        "recon_gap": (rec_a - clean).pow(2).mean() - (rec - clean).pow(2).mean(),
        "recon_psnr_self": psnr(rec_a, protected),
        "recon_psnr": psnr(rec_a, clean),
        "clean_recon_psnr": psnr(rec, clean),
    }


def test_matches_direct_computation_and_batching(pairs):
    protected, clean = pairs
    base = load_vae("tiny")
    adapted = add_cat_adapter(load_vae("tiny"), cat_lora_config("encoder", rank=2))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    metric = LatentDistortion(adapted, reference_vae=base)
    metric.update(protected[:1], clean[:1])
    metric.update(protected[1:], clean[1:])
    values = metric.compute()
    expected = _reference(adapted, base, protected, clean)
    assert values.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(values[key], value.float(), rtol=1e-4, atol=1e-7), key
    assert values["latent_mse_vs_reference"] > values["latent_mse"] > 0  # the adapted encoder moved its latents
    metric.reset()
    metric.update(protected, clean)
    assert torch.allclose(metric.compute()["recon_mse"], values["recon_mse"], rtol=1e-6)


def test_clean_against_itself_and_without_reference(pairs):
    _, clean = pairs
    metric = LatentDistortion(load_vae("tiny"))
    metric.update(clean, clean)
    values = metric.compute()
    assert values["latent_mse"] == 0 and values["latent_mse_vs_reference"] == 0 and values["recon_gap"] == 0
    assert values["recon_mse"] == values["clean_recon_mse"] == values["recon_mse_self"] > 0


def test_bad_input():
    with pytest.raises(TypeError, match="vae must be a VAE"):
        LatentDistortion(torch.nn.Linear(2, 2))
    metric = LatentDistortion(load_vae("tiny"))
    with pytest.raises(ValueError, match="one shape"):
        metric.update(torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32))


def test_callback_asks_for_pairs(photos_dir, tmp_path):
    from lightning.pytorch import Trainer

    from lightning_cat.callbacks import LatentDistortionCallback
    from lightning_cat.datamodules import ImageFolderDataModule
    from lightning_cat.modules import CATAdapterModule

    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[LatentDistortionCallback()],
    )
    with pytest.raises(KeyError, match="no step had them"):
        trainer.test(CATAdapterModule(lora_rank=2), ImageFolderDataModule(str(photos_dir), resolution=64, batch_size=5))


def test_compute_keys_are_listed():
    metric = LatentDistortion(load_vae("tiny"))
    metric.update(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    assert tuple(metric.compute()) == LatentDistortion.KEYS


@pytest.mark.parametrize(
    ("keys", "encodes", "decodes"),
    [
        (["latent_mse_relative", "recon_psnr"], 2, 1),  # the shipped SD 2.1 configs' keys: no clean decode
        (["recon_psnr", "recon_mse_self"], 1, 1),
        (["latent_mse", "latent_mse_vs_reference"], 3, 0),
        (["recon_gap"], 2, 2),
        (None, 3, 2),
    ],
)
def test_keys_compute_the_same_values_with_only_the_passes_they_need(pairs, keys, encodes, decodes):
    protected, clean = pairs
    base, adapted = load_vae("tiny"), load_vae("tiny")
    with torch.no_grad():
        adapted.encoder.conv_in.weight.mul_(1.1)  # a reference VAE that differs from the evaluated one
    calls = {"encode": 0, "decode": 0}

    def counting(vae, name):
        original = getattr(vae, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        setattr(vae, name, wrapper)

    for vae in (base, adapted):
        counting(vae, "encode")
        counting(vae, "decode")
    full = LatentDistortion(adapted, reference_vae=base)
    full.update(protected, clean)
    expected = full.compute()
    calls.update(encode=0, decode=0)
    metric = LatentDistortion(adapted, reference_vae=base, keys=keys)
    metric.update(protected, clean)
    values = metric.compute()
    assert list(values) == (keys or list(LatentDistortion.KEYS))
    for key, value in values.items():
        assert torch.equal(value, expected[key]), key
    assert calls == {"encode": encodes, "decode": decodes}


def test_unknown_keys_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown keys \['psnr'\]; choose from \['latent_mse'"):
        LatentDistortion(load_vae("tiny"), keys=["latent_mse", "psnr"])
    with pytest.raises(ValueError, match="keys is empty; choose from"):
        LatentDistortion(load_vae("tiny"), keys=[])


def test_callback_rejects_unknown_keys():
    from lightning_cat.callbacks import LatentDistortionCallback

    with pytest.raises(ValueError, match="latent_mse_relative"):
        LatentDistortionCallback(keys=["latent_mse_relative", "psnr"])


def test_callback_reads_evaluation_module_outputs(tiny_model_path, tmp_path):
    """EvaluationDataModule + EvaluationModule (as the experiment runner uses them): generated-only
    steps are skipped, the paired ones give the same numbers as the metric on the pairs."""
    from lightning.pytorch import Trainer

    from lightning_cat.callbacks import LatentDistortionCallback
    from lightning_cat.datamodules import EvaluationDataModule
    from lightning_cat.images import load_image, pil_to_tensor, save_png
    from lightning_cat.modules import EvaluationModule

    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    protected = (clean + 0.1 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(-1, 1)
    for index in range(2):
        save_png(clean[index], tmp_path / "clean" / f"{index}.png")
        save_png(protected[index], tmp_path / "protected" / f"{index}.png")
    for index in range(5):  # more generated images than pairs: later steps have no pair
        save_png(clean[0], tmp_path / "generated" / f"{index}.png")
    data = EvaluationDataModule(
        clean_root=str(tmp_path / "clean"),
        protected_root=str(tmp_path / "protected"),
        generated_root=str(tmp_path / "generated"),
        resolution=32,
        batch_size=1,
    )
    callback = LatentDistortionCallback("tiny", keys=["latent_mse_relative", "recon_psnr"])
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[callback]
    )
    (logged,) = trainer.test(EvaluationModule(), data, verbose=False)
    assert set(logged) == {"test/base/latent_mse_relative", "test/base/recon_psnr"}
    reference = LatentDistortion(load_vae("tiny"))
    saved = {
        kind: torch.stack([pil_to_tensor(load_image(tmp_path / kind / f"{i}.png")) for i in range(2)])
        for kind in ("protected", "clean")
    }
    reference.update(saved["protected"], saved["clean"])
    expected = reference.compute()
    assert logged["test/base/latent_mse_relative"] == pytest.approx(expected["latent_mse_relative"].item(), rel=1e-5)
    assert logged["test/base/recon_psnr"] == pytest.approx(expected["recon_psnr"].item(), rel=1e-5)
