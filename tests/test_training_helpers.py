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
    layerwise_checkpoint,
    load_components,
    sample_noise_and_timesteps,
    snr_weights,
    weight_dtype,
)
from lightning_cat.optimization import adamw, apply_gradients
from lightning_cat.protections.stash import OptimizerStateStash


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


def test_layerwise_checkpoint_recomputes_vae_blocks_layer_by_layer_with_the_same_gradients(tiny):
    vae = tiny.vae
    down, up = vae.encoder.down_blocks[0], vae.decoder.up_blocks[-1]
    watched = {"down": down, "down_conv": down.resnets[0].conv1, "up": up, "up_conv": up.resnets[0].conv1}
    torch.manual_seed(0)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    results, calls = {}, {}
    for mode in ("off", "blocks", "layers"):
        counts = dict.fromkeys(watched, 0)
        hooks = [
            module.register_forward_pre_hook(
                lambda *_, name=name, counts=counts: counts.update({name: counts[name] + 1})
            )
            for name, module in watched.items()
        ]
        x = images.clone().requires_grad_(True)
        try:
            if mode != "off":
                vae.enable_gradient_checkpointing(layerwise_checkpoint if mode == "layers" else None)
            reconstruction = vae.decode(vae.encode(x).latent_dist.mean).sample
            weight = vae.decoder.conv_out.weight
            weight.requires_grad_(True)
            loss = reconstruction.square().mean()
            results[mode] = torch.autograd.grad(loss, [x, vae.encoder.conv_in.weight])
        finally:
            vae.disable_gradient_checkpointing()
            weight.requires_grad_(False)
            for hook in hooks:
                hook.remove()
        calls[mode] = counts
    for mode in ("blocks", "layers"):
        for ours, reference in zip(results[mode], results["off"], strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)
    assert calls["off"] == dict.fromkeys(watched, 1)
    assert calls["blocks"] == dict.fromkeys(watched, 2)  # diffusers' way: whole blocks run again
    assert calls["layers"] == {"down": 1, "down_conv": 2, "up": 1, "up_conv": 2}  # only their layers do
    layers = [*down.resnets, *down.downsamplers, *up.resnets]
    assert not any("forward" in layer.__dict__ for layer in layers)  # the layers' own forward is back
    # a forward set on the instance before (e.g. by a hook) is put back, not dropped
    resnet = down.resnets[0]
    resnet.forward = wrapped = lambda *args, **kwargs: type(resnet).forward(resnet, *args, **kwargs)
    x = images.clone().requires_grad_(True)
    try:
        vae.enable_gradient_checkpointing(layerwise_checkpoint)
        (gradient,) = torch.autograd.grad(vae.encode(x).latent_dist.mean.square().mean(), x)
    finally:
        vae.disable_gradient_checkpointing()
    assert resnet.__dict__.get("forward") is wrapped
    del resnet.forward
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def _two_sets(seed: int = 0):
    """Weights of two small "models" (the 8-bit optimizer quantizes tensors of 4096 elements and more)."""
    torch.manual_seed(seed)
    return [[torch.randn(96, 80), torch.randn(80)], [torch.randn(64, 96), torch.randn(96)]], torch.randn(4, 64)


def _train_two_sets(optimizer_name, steps=3, on_optimizer=None, **apply_options):
    weights, inputs = _two_sets()
    groups = [[torch.nn.Parameter(w.clone()) for w in group] for group in weights]
    flat = [p for group in groups for p in group]
    optimizer = adamw([{"params": flat}], optimizer_name, lr=1e-2, weight_decay=1e-2)
    if on_optimizer is not None:
        on_optimizer(optimizer, groups)
    for _ in range(steps):
        (a, b), (c, d) = groups
        loss = ((inputs @ c + d) @ a + b).square().mean()
        step_in_turn = groups if apply_options.pop("in_turn", False) else None
        apply_gradients(loss, optimizer, flat, max_grad_norm=0.5, step_in_turn=step_in_turn, **apply_options)
        assert all(p.grad is None for p in flat)
        apply_options["in_turn"] = step_in_turn is not None
    return [p.detach() for p in flat], optimizer, [w for group in weights for w in group]


@pytest.mark.parametrize("optimizer_name", ["adamw", "adamw_8bit"])
def test_step_in_turn_updates_like_one_step_and_frees_each_set_before_the_next(optimizer_name):
    if optimizer_name == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    live_grads = []

    def watch(optimizer, groups):
        optimizer.register_step_pre_hook(
            lambda *_: live_grads.append([sum(p.grad is not None for p in group) for group in groups])
        )

    together, _, initial = _train_two_sets(optimizer_name)
    in_turn, _, _ = _train_two_sets(optimizer_name, on_optimizer=watch, in_turn=True)
    for a, b, w in zip(together, in_turn, initial, strict=True):
        assert torch.equal(a, b) and not torch.equal(a, w)
    # each step: the first set's update sees only its gradients, the second's after the first's were freed
    assert live_grads == [[2, 0], [0, 2]] * 3


@pytest.mark.parametrize("location", ["cpu", "disk"])
@pytest.mark.parametrize("optimizer_name", ["adamw", "adamw_8bit"])
def test_optimizer_state_stash_holds_the_states_between_steps_bit_for_bit(optimizer_name, location, tmp_path):
    if optimizer_name == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    expected, _, _ = _train_two_sets(optimizer_name)
    stash = OptimizerStateStash(location, directory=tmp_path)
    for in_turn in (False, True):
        weights, optimizer, _ = _train_two_sets(optimizer_name, state_stash=stash, in_turn=in_turn)
        assert all(torch.equal(a, b) for a, b in zip(weights, expected, strict=True))
        held = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
        if location == "disk":  # between steps the optimizer holds no state tensor: they are in the files
            assert held == [] and len(list(next(tmp_path.iterdir()).iterdir())) == (2 if in_turn else 1)
            flat = optimizer.param_groups[0]["params"]
            for parameters in [flat[:2], flat[2:]] if in_turn else [flat]:  # the sets it was put in
                stash.take(optimizer, parameters)
            assert len(optimizer.state) == 4 and all(len(state) > 1 for state in optimizer.state.values())
        else:
            assert held
        stash.close()
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"must be one of \['device', 'cpu', 'disk'\], got 'gpu'"):
        OptimizerStateStash("gpu")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16), ("32-true", torch.float32), (32, torch.float32)],
)
def test_weight_dtype(precision, dtype):
    assert weight_dtype(precision) is dtype
