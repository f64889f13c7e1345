"""Model-based purifiers on the offline tiny models: shape, range, seeds, objectives, options."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from lightning_cat.diffusion import decode_latents, latent_distribution, load_components, scale_latents
from lightning_cat.images import ImageTransform, load_image
from lightning_cat.pixels import to_uint8
from lightning_cat.purification import (
    IMPRESS,
    PURIFIERS,
    FaceRestorer,
    LatentDiffPure,
    LatentGrIDPure,
    NoisyUpscale,
    StateDictFaceRestorer,
    build_purifier,
)
from lightning_cat.purification.latent_gridpure import corner_mosaic, merge_tiles, tile_origins
from lightning_cat.purification.noisy_upscale import low_resolution_size
from lightning_cat.purification.sdedit import sdedit_timesteps

#: Cheap settings of every model-based purifier on the tiny models.
FAST = {
    "noisy_upscale": {"pretrained_model_name_or_path": "tiny-upscaler", "num_inference_steps": 3},
    "latent_diffpure": {"pretrained_model_name_or_path": "tiny", "timestep": 20, "num_inference_steps": 3},
    "latent_gridpure": {"pretrained_model_name_or_path": "tiny", "timestep": 2, "iterations": 1},
    "impress": {
        "pretrained_model_name_or_path": "tiny",
        "iterations": 3,
        "lpips_net": "alex",
        "lpips_random_backbone": True,
    },
}
STOCHASTIC = ("noisy_upscale", "latent_diffpure", "latent_gridpure")


@pytest.fixture(scope="module")
def batch(photos_dir):
    transform = ImageTransform(resolution=64)
    return torch.stack([transform(load_image(photos_dir / f"{n}.png")) for n in ("astronaut", "coffee")])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(FAST))
def test_keeps_shape_range_and_is_deterministic(name, batch):
    purifier = build_purifier(name, **FAST[name])
    image = batch[:1]
    out = purifier(image, generator=seeded(0))
    assert out.shape == image.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(to_uint8(out).float() / 127.5 - 1, out)  # on the 8-bit grid
    assert (out - image).abs().mean() > 1 / 255
    assert torch.equal(out, purifier(image, generator=seeded(0)))
    if name in STOCHASTIC:
        assert not torch.equal(out, purifier(image, generator=seeded(1)))
    params = purifier.params()
    assert params["name"] == name and PURIFIERS[name] is type(purifier)
    assert "progress_bar" not in params and json.loads(json.dumps(params)) == params


def test_tiny_upscaler_is_an_x4_upscale_pipeline():
    from lightning_cat.diffusion import load_upscale_pipeline

    pipeline = load_upscale_pipeline("tiny-upscaler")
    assert type(pipeline).__name__ == "StableDiffusionUpscalePipeline"
    assert pipeline.unet.config.in_channels == 7 and pipeline.config.max_noise_level == 350
    assert pipeline.vae.config.scaling_factor == pytest.approx(0.08333)
    out = pipeline(
        prompt=["a photo"],
        image=torch.zeros(1, 3, 16, 16),
        num_inference_steps=2,
        generator=seeded(0),
        output_type="pt",
    ).images
    assert out.shape == (1, 3, 64, 64)


def test_low_resolution_size():
    assert low_resolution_size(512, 512, 128, 8) == (128, 128)  # the reference: 512 -> 128 -> x4
    assert low_resolution_size(64, 64, 128, 2) == (16, 16)  # tiny images: a quarter
    assert low_resolution_size(1024, 1024, 128, 8) == (128, 128)  # then resized back to 1024
    assert low_resolution_size(512, 768, 128, 8) == (128, 192)


def test_noisy_upscale_batch_and_larger_inputs(batch):
    purifier = NoisyUpscale("tiny-upscaler", num_inference_steps=2)
    out = purifier(batch, generator=seeded(0))
    assert out.shape == batch.shape
    large = torch.nn.functional.interpolate(batch[:1], size=(96, 96), mode="bilinear")
    assert purifier(large, generator=seeded(0)).shape == large.shape  # 96 -> 24 -> 96


class HalveContrast(torch.nn.Module):
    """A stand-in restoration network: ``out = scale * x`` with a learnable scale."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x, w=1.0, adain=False):
        assert adain  # call_kwargs reach forward
        return self.scale * x * w, "extra output"


class RecordingRestorer(FaceRestorer):
    def __init__(self) -> None:
        self.calls = 0

    def restore(self, images):
        self.calls += 1
        return images.flip(-1)


def test_state_dict_face_restorer(tmp_path, batch):
    from safetensors.torch import save_file

    weights = tmp_path / "restorer.safetensors"
    save_file({"scale": torch.full((3, 1, 1), 0.5)}, str(weights))
    restorer = StateDictFaceRestorer(
        architecture="test_purification_models:HalveContrast",
        weights_path=str(weights),
        fidelity=0.5,
        call_kwargs={"adain": True},
        input_size=None,
    )
    assert torch.allclose(restorer(batch), batch * 0.25)  # scale 0.5 from the file, w = fidelity 0.5
    resized = StateDictFaceRestorer(
        "test_purification_models:HalveContrast", str(weights), fidelity=1.0, call_kwargs={"adain": True}, input_size=32
    )
    assert resized(batch).shape == batch.shape
    assert pickle.loads(pickle.dumps(restorer))._network is None
    with pytest.raises(FileNotFoundError, match="weights_path"):
        StateDictFaceRestorer("test_purification_models:HalveContrast", str(tmp_path / "missing.pth"))
    with pytest.raises(ImportError, match="architecture"):
        StateDictFaceRestorer("no_such_module:Net", str(weights))


def test_noisy_upscale_runs_the_face_restorer_first(batch):
    restorer = RecordingRestorer()
    with_restorer = NoisyUpscale("tiny-upscaler", num_inference_steps=2, face_restorer=restorer)
    plain = NoisyUpscale("tiny-upscaler", num_inference_steps=2)
    out = with_restorer(batch[:1], generator=seeded(0))
    assert restorer.calls == 1
    assert torch.equal(out, plain(batch[:1].flip(-1), generator=seeded(0)))
    assert with_restorer.params()["face_restorer"] == {"class": "RecordingRestorer"}


def test_sdedit_timesteps():
    assert sdedit_timesteps(10) == list(range(9, -1, -1))
    assert sdedit_timesteps(100, 5) == [99, 74, 50, 25, 0]
    assert sdedit_timesteps(7, 1) == [6]
    for steps in range(1, 31):
        values = sdedit_timesteps(30, steps)
        assert len(values) == steps and all(a > b for a, b in zip(values, values[1:], strict=False))
    with pytest.raises(ValueError, match="num_inference_steps"):
        sdedit_timesteps(10, 11)


class OracleUNet(torch.nn.Module):
    """Predicts exactly the epsilon / velocity that is consistent with known clean latents."""

    def __init__(self, clean: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.clean = clean
        self.scheduler = scheduler

    def forward(self, sample, t, encoder_hidden_states):
        clean = self.clean.repeat(sample.shape[0] // self.clean.shape[0], 1, 1, 1)
        alpha = self.scheduler.alphas_cumprod[int(t)]
        noise = (sample - alpha.sqrt() * clean) / (1 - alpha).sqrt()
        if self.scheduler.config.prediction_type == "v_prediction":
            noise = alpha.sqrt() * noise - (1 - alpha).sqrt() * clean
        return type("Output", (), {"sample": noise})()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("timestep", "steps", "guidance"), [(1, None, 1.0), (300, 7, 1.0), (50, None, 3.0)])
def test_sdedit_with_an_oracle_unet_returns_the_clean_latents(prediction_type, timestep, steps, guidance):
    """Noising, the timestep list, v/epsilon handling and DDPM steps agree: an oracle UNet recovers z0."""
    from diffusers import DDPMScheduler

    from lightning_cat.purification.sdedit import sdedit_latents

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.register_to_config(prediction_type=prediction_type)
    clean = torch.randn(2, 4, 8, 8, generator=seeded(0))
    context = torch.zeros(2, 77, 8)
    out = sdedit_latents(
        OracleUNet(clean, scheduler),
        scheduler,
        clean,
        context,
        sdedit_timesteps(timestep, steps),
        uncond_hidden_states=context,
        guidance_scale=guidance,
        generator=seeded(1),
    )
    assert torch.allclose(out, clean, atol=1e-4)


@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_latent_diffpure_departs_from_the_vae_round_trip_with_t(model, batch):
    """Small t* stays closer to D(E(x)) than large t* (tiny model, random weights)."""
    parts = load_components(model, parts=["vae"])
    with torch.no_grad():
        round_trip = decode_latents(parts.vae, scale_latents(parts.vae, latent_distribution(parts.vae, batch).mean))
    round_trip = round_trip.clamp(-1, 1)
    near = LatentDiffPure(model, timestep=1).purify(batch, generator=seeded(0))
    far = LatentDiffPure(model, timestep=600, num_inference_steps=2).purify(batch, generator=seeded(0))
    near_error = (near - round_trip).abs().mean().item()
    far_error = (far - round_trip).abs().mean().item()
    assert near_error < far_error


def test_grid_tiles_cover_and_merge_back(batch):
    assert tile_origins(64, 32, 16) == [0, 16, 32]
    assert tile_origins(70, 32, 16) == [0, 16, 32, 38]
    tile = 32
    boxes = [(t, left) for t in tile_origins(64, tile, 16) for left in tile_origins(64, tile, 16)]
    tiles = torch.stack([batch[..., t : t + tile, left : left + tile] for t, left in boxes], dim=1)
    mosaics = corner_mosaic(batch, tile)
    assert torch.equal(mosaics[..., :16, 16:], batch[..., :16, -16:])
    # Unchanged tiles (and mosaics) average back to the image itself.
    assert torch.allclose(merge_tiles(tiles, boxes, tile, 64, 64, mosaics), batch, atol=1e-6)
    assert torch.allclose(merge_tiles(tiles, boxes, tile, 64, 64), batch, atol=1e-6)


def test_gridpure_gamma_blends_with_the_previous_image(batch):
    """One iteration: out = (1 - gamma) * merged + gamma * x, so outputs for two gammas are affine."""
    image = batch[:1]
    kwargs = {"timestep": 3, "iterations": 1}
    merged = LatentGrIDPure("tiny", gamma=0.0, **kwargs).purify(image, generator=seeded(0))
    blended = LatentGrIDPure("tiny", gamma=0.5, **kwargs).purify(image, generator=seeded(0))
    assert torch.allclose(blended, 0.5 * merged + 0.5 * image, atol=1e-5)


def test_impress_lowers_its_objective_and_keeps_lpips_under_margin(batch):
    purifier = IMPRESS("tiny", iterations=15, lpips_net="alex", lpips_random_backbone=True)
    result = purifier.optimize(batch[:1])
    objective = result.objective
    assert objective[-1] < 0.9 * objective[0]
    assert result.consistency[-1] < result.consistency[0]
    models = purifier.models("cpu")
    from lightning_cat.purification.impress import impress_objective

    with torch.no_grad():
        final, _, distance = impress_objective(models["vae"], models["lpips"], result.images, batch[:1], 0.1, 0.1)
    assert final.item() < objective[0]
    assert distance.item() < purifier.margin
    assert result.images.min() >= -1 and result.images.max() <= 1


def test_impress_hinge_pulls_back_beyond_the_margin(batch):
    """With margin 0 and a heavy weight the LPIPS term dominates and keeps x closer to x_p."""
    free = IMPRESS("tiny", iterations=5, weight=0.0, lpips_net="alex", lpips_random_backbone=True)
    held = IMPRESS("tiny", iterations=5, weight=100.0, margin=0.0, lpips_net="alex", lpips_random_backbone=True)
    image = batch[:1]
    drift_free = (free.optimize(image).images - image).abs().mean()
    drift_held = (held.optimize(image).images - image).abs().mean()
    assert drift_held < drift_free


def test_loaded_models_are_not_pickled(batch):
    purifier = LatentDiffPure("tiny", timestep=2)
    purifier(batch[:1], generator=seeded(0))
    assert purifier._models is not None
    clone = pickle.loads(pickle.dumps(purifier))
    assert clone._models is None and clone.params() == purifier.params()
    assert len(pickle.dumps(purifier)) < 10_000


def test_works_as_a_datamodule_option(photos_dir):
    from lightning_cat.datamodules import ImageFolderDataModule

    purifier = LatentDiffPure("tiny", timestep=5, num_inference_steps=2)
    plain = ImageFolderDataModule(str(photos_dir), resolution=64).dataset
    purified = ImageFolderDataModule(str(photos_dir), resolution=64, purifier=purifier).dataset
    item = purified[0]
    assert item["image"].shape == (3, 64, 64)
    assert not torch.equal(item["image"], plain[0]["image"])


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("noisy_upscale", {"noise_level": 351}, ValueError, "noise_level"),
        ("noisy_upscale", {"prompt": "a photo of {subject}"}, ValueError, "class_name"),
        ("noisy_upscale", {"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ("noisy_upscale", {"low_resolution": 4}, ValueError, "low_resolution"),
        ("noisy_upscale", {"face_restorer": "codeformer"}, TypeError, "face_restorer"),
        ("noisy_upscale", {"dtype": "float64"}, ValueError, "dtype"),
        ("latent_diffpure", {"timestep": 0}, ValueError, "timestep"),
        ("latent_diffpure", {"timestep": 10, "num_inference_steps": 11}, ValueError, "num_inference_steps"),
        ("latent_diffpure", {"pretrained_model_name_or_path": "./no/such/model"}, FileNotFoundError, "LatentDiffPure"),
        ("latent_diffpure", {"pretrained_model_name_or_path": " "}, ValueError, "empty"),
        ("latent_gridpure", {"gamma": 1.0}, ValueError, "gamma"),
        ("latent_gridpure", {"iterations": 0}, ValueError, "iterations"),
        ("latent_gridpure", {"tile_size": 31}, ValueError, "tile_size"),
        ("latent_gridpure", {"tile_size": 16, "tile_stride": 32}, ValueError, "tile_stride"),
        ("impress", {"lpips_random_backbone": False}, ValueError, "lpips_backbone_weights"),
        ("impress", {"lpips_backbone_weights": "/no/vgg16.pth"}, FileNotFoundError, "lpips_backbone_weights"),
        ("impress", {"lpips_net": "resnet"}, ValueError, "lpips_net"),
        ("impress", {"iterations": 0}, ValueError, "iterations"),
        ("impress", {"lr": 0.0}, ValueError, "lr"),
        ("impress", {"margin": -0.1}, ValueError, "margin"),
    ],
)
def test_bad_options_rejected_before_loading(name, options, error, match):
    with pytest.raises(error, match=match):
        build_purifier(name, **{**FAST[name], **options})


def test_gridpure_tile_larger_than_image_is_a_clear_error(batch):
    with pytest.raises(ValueError, match="exceeds"):
        LatentGrIDPure("tiny", tile_size=128, iterations=1, timestep=2)(batch[:1])
