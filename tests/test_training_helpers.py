"""Shared plain-torch diffusion helpers: latents, noise, targets, the DreamBooth loss."""

from __future__ import annotations

import pytest
import torch

from lightning_cat.customization import dreambooth_loss
from lightning_cat.diffusion import (
    LatentDistribution,
    diffusion_loss,
    encode_latents,
    encode_prompts,
    latent_distribution,
    load_components,
    sample_noise_and_timesteps,
    snr_weights,
    weight_dtype,
)
from lightning_cat.optimization import adamw, apply_gradients


@pytest.fixture(scope="module")
def tiny():
    return load_components("tiny")


def test_encode_latents_shape_and_scaling(tiny):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mean = encode_latents(tiny.vae, images, sample=False)
        raw = tiny.vae.encode(images).latent_dist.mean
    assert mean.shape == (2, 4, 32, 32)
    assert torch.allclose(mean, raw * tiny.vae.config.scaling_factor)


def test_cached_distribution_samples_like_diffusers(tiny):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        cached = latent_distribution(tiny.vae, images)
        expected = tiny.vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(3))
    assert torch.equal(cached.sample(torch.Generator().manual_seed(3)), expected)
    joined = LatentDistribution.cat([cached[:1], cached[1:]])
    assert torch.equal(joined.mean, cached.mean)


def test_dreambooth_loss_is_instance_plus_weighted_prior(tiny):
    latents = torch.randn(4, 4, 32, 32)
    embeds = encode_prompts(
        tiny.tokenizer, tiny.text_encoder, ["a photo of sks person"] * 2 + ["a photo of person"] * 2
    )
    noise, timesteps = sample_noise_and_timesteps(
        tiny.noise_scheduler, latents, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        per_sample = diffusion_loss(tiny.unet, tiny.noise_scheduler, latents, embeds, noise=noise, timesteps=timesteps)
        result = dreambooth_loss(
            tiny.unet,
            tiny.noise_scheduler,
            latents,
            embeds,
            num_instance=2,
            prior_loss_weight=0.5,
            noise=noise,
            timesteps=timesteps,
        )
        no_prior = dreambooth_loss(tiny.unet, tiny.noise_scheduler, latents, embeds, noise=noise, timesteps=timesteps)
    assert torch.allclose(result.instance, per_sample[:2].mean())
    assert torch.allclose(result.prior, per_sample[2:].mean())
    assert torch.allclose(result.loss, per_sample[:2].mean() + 0.5 * per_sample[2:].mean())
    assert no_prior.prior is None and torch.allclose(no_prior.loss, per_sample.mean())
    with pytest.raises(ValueError, match="num_instance"):
        dreambooth_loss(tiny.unet, tiny.noise_scheduler, latents, embeds, num_instance=0)


def test_noise_and_timesteps_are_seeded_and_bounded(tiny):
    latents = torch.zeros(64, 4, 2, 2)
    a = sample_noise_and_timesteps(
        tiny.noise_scheduler, latents, generator=torch.Generator().manual_seed(1), timestep_range=(100, 200)
    )
    b = sample_noise_and_timesteps(
        tiny.noise_scheduler, latents, generator=torch.Generator().manual_seed(1), timestep_range=(100, 200)
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].min() >= 100 and a[1].max() < 200
    with pytest.raises(ValueError, match="timestep_range"):
        sample_noise_and_timesteps(tiny.noise_scheduler, latents, timestep_range=(5, 2000))


def test_snr_weights(tiny):
    t = torch.arange(0, 1000, 50)
    weights = snr_weights(tiny.noise_scheduler, t, gamma=5.0)
    alphas = tiny.noise_scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    assert torch.allclose(weights, torch.clamp(snr, max=5.0) / snr)
    assert (weights <= 1 + 1e-6).all() and weights[-1] == pytest.approx(1.0)


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop():
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    gradients = [torch.randn_like(w) for w in weights]
    runs = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        options = {} if fused else {"fused": False}
        optimizer = adamw([{"params": iter(params)}], lr=1e-2, weight_decay=1e-2, **options)
        assert optimizer.defaults["fused"] is fused
        for _ in range(3):
            for p, g in zip(params, gradients, strict=True):
                p.grad = g.clone()
            optimizer.step()
        runs[fused] = params
    for a, b, w in zip(runs[True], runs[False], weights, strict=True):
        assert not torch.equal(a, w) and torch.allclose(a, b, atol=1e-6)
    integer = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    assert adamw([{"params": [integer]}], lr=1e-2).defaults["fused"] is False


def test_apply_gradients_steps_and_refuses_nan():
    layer = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    apply_gradients(layer(torch.ones(1, 3)).sum() * 100, optimizer, max_grad_norm=1e-3)
    step = (layer.weight.detach() - before).norm()
    assert 0 < step <= 0.1 * 1e-3 + 1e-9  # clipped to norm 1e-3, times lr
    after = layer.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="loss is nan"):
        apply_gradients(layer(torch.full((1, 3), float("nan"))).sum(), optimizer)
    assert torch.equal(layer.weight, after)


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16), ("32-true", torch.float32), (32, torch.float32)],
)
def test_weight_dtype(precision, dtype):
    assert weight_dtype(precision) is dtype
