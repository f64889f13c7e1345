"""The denoising objective: noise and timesteps, the prediction target, ``L_DM``.

DreamBooth fine-tuning, the surrogates of FSMG/ASPL/MetaCloak/CAAT and the AdvDM-family
objectives all call these, so a fix here reaches all of them. Epsilon, v-prediction (SD 2.1)
and sample prediction follow the scheduler's ``prediction_type``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["diffusion_loss", "sample_noise_and_timesteps", "snr_weights", "training_target"]


def sample_noise_and_timesteps(
    noise_scheduler,
    latents: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    timestep_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like ``latents`` and timesteps uniform on ``[low, high)`` (default all).

    Drawn on the generator's device and moved to the latents' device, so a seeded CPU generator
    gives the same draws whatever device the model runs on.
    """
    num_train = noise_scheduler.config.num_train_timesteps
    low, high = timestep_range if timestep_range is not None else (0, num_train)
    if not 0 <= low < high <= num_train:
        raise ValueError(f"timestep_range must satisfy 0 <= low < high <= {num_train}, got ({low}, {high})")
    device = generator.device if generator is not None else latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(low, high, (latents.shape[0],), generator=generator, device=device)
    return noise.to(latents.device), timesteps.to(latents.device)


def training_target(
    noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict: the noise, the velocity or the clean latents."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample")


def snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the scheduler's prediction type."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def diffusion_loss(
    unet,
    noise_scheduler,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    timestep_range: tuple[int, int] | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Per-sample ``L_DM``: mean squared error of the UNet prediction against the target, ``[B]``.

    Noise and timesteps are drawn (from ``generator``) unless given.
    """
    if noise is None or timesteps is None:
        drawn_noise, drawn_t = sample_noise_and_timesteps(
            noise_scheduler, latents, generator=generator, timestep_range=timestep_range
        )
        noise = drawn_noise if noise is None else noise
        timesteps = drawn_t if timesteps is None else timesteps
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = training_target(noise_scheduler, latents, noise, timesteps)
    unet_dtype = next(unet.parameters()).dtype
    prediction = unet(noisy.to(unet_dtype), timesteps, encoder_hidden_states.to(unet_dtype)).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        per_sample = per_sample * snr_weights(noise_scheduler, timesteps, snr_gamma)
    return per_sample
