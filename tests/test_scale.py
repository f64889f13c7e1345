"""The architecture-only SD 2.1 models: published shapes, normal loading, every stage at paper size.

The fast tests build the models on the meta device (no weights) from the configs the library
writes, and load the tokenizer and schedulers through the normal path. The slow tests build the
real-size models (about 5 GB each and the 3.3 GB upscaler, in a temporary cache removed
afterwards) and run each stage for one step at the papers' resolutions on CPU (measured: 12.3 GiB
peak RSS, the CAT step; 21 minutes at one thread), and the shipped SD 2.1 evaluation configs end
to end at 512 px (7 minutes at one thread).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lightning_cat.diffusion import check_model_name, load_components, load_inference_scheduler, resolve_model_path
from lightning_cat.diffusion import shape as shape_module
from lightning_cat.diffusion.shape import SHAPE_MODELS, SHAPE_RESOLUTIONS, shape_configs, write_shape_configs

# The parameter counts of the published SD 2.1 checkpoints (UNet, OpenCLIP-H text encoder, VAE).
PUBLISHED_PARAMETERS = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}
PREDICTION = {"sd21-base-shape": "epsilon", "sd21-shape": "v_prediction"}


def _meta_models(folder):
    """The three networks built from the written configs on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    return {"unet": unet, "text_encoder": text_encoder, "vae": vae}


@pytest.mark.parametrize("name", sorted(SHAPE_MODELS))
def test_shape_configs_have_the_published_architecture(tmp_path, name):
    write_shape_configs(tmp_path, name)
    models = _meta_models(tmp_path)
    counts = {part: sum(p.numel() for p in model.parameters()) for part, model in models.items()}
    assert counts == PUBLISHED_PARAMETERS
    unet = models["unet"].config
    assert unet.cross_attention_dim == 1024 and unet.use_linear_projection
    assert list(unet.attention_head_dim) == [5, 10, 20, 20]
    assert unet.sample_size * 8 == SHAPE_RESOLUTIONS[name]
    assert unet.upcast_attention == (name == "sd21-shape")  # only the 768-v model upcasts attention
    text = models["text_encoder"].config
    assert (text.hidden_size, text.num_hidden_layers, text.hidden_act) == (1024, 23, "gelu")
    assert models["vae"].config.scaling_factor == 0.18215
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]


@pytest.mark.parametrize("name", sorted(SHAPE_MODELS))
def test_shape_names_load_through_the_normal_path(tmp_path, monkeypatch, name):
    # A finished build in the cache (weights left out: the fast suite loads the light parts only).
    monkeypatch.setenv("LIGHTNING_CAT_CACHE", str(tmp_path))
    shape_module.ensure_shape_model.cache_clear()
    built = []
    monkeypatch.setattr(
        shape_module, "_build", lambda folder, model: (built.append(model), write_shape_configs(folder, model))
    )
    try:
        check_model_name(name)
        path = resolve_model_path(name)
        assert path.startswith(str(tmp_path)) and built == [name]
        assert resolve_model_path(name) == path and built == [name]  # built once
        parts = load_components(name, parts=("tokenizer", "noise_scheduler"))
    finally:
        shape_module.ensure_shape_model.cache_clear()
    tokenizer = parts.tokenizer
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0  # SD 2 pads with "!", SD 1 with <|endoftext|>
    ids = tokenizer("a photo of sks person", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[6] == 49407 and set(ids[7:]) == {0}
    assert parts.prediction_type == PREDICTION[name]
    expected = {"sd21-base-shape": "PNDMScheduler", "sd21-shape": "DDIMScheduler"}[name]
    assert type(load_inference_scheduler(name)).__name__ == expected


def test_unknown_shape_model_is_refused():
    with pytest.raises(ValueError, match="sd21-base-shape"):
        shape_configs("sd15-shape")


def test_shape_upscaler_has_the_published_x4_architecture(tmp_path, monkeypatch):
    """The values of the x4 upscaler's original config (x4-upscaling.yaml), through the normal path."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lightning_cat.diffusion import shape_upscaler

    configs = shape_upscaler.shape_upscaler_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
    assert unet.conv_in.in_channels == 7 and unet.class_embedding.num_embeddings == 1000  # latent + image; noise level
    assert list(unet.config.block_out_channels) == [256, 512, 512, 1024]  # model_channels 256, channel_mult 1 2 2 4
    # Attention at downsampling 2, 4, 8; self-attention disabled in the first three levels only.
    assert not hasattr(unet.down_blocks[0], "attentions")
    assert [b.attentions[0].transformer_blocks[0].only_cross_attention for b in unet.down_blocks[1:]] == [
        True,
        True,
        False,
    ]
    assert unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.heads == 8
    assert len(vae.encoder.down_blocks) == 3 and vae.config.scaling_factor == 0.08333  # ch_mult 1 2 4
    # The name resolves to a build in the cache (weights left out here), once.
    monkeypatch.setenv("LIGHTNING_CAT_CACHE", str(tmp_path))
    shape_upscaler.ensure_shape_upscaler.cache_clear()
    built = []
    monkeypatch.setattr(shape_upscaler, "_build", lambda folder: (built.append(folder), folder.mkdir(exist_ok=True)))
    try:
        check_model_name("sd-x4-upscaler-shape")
        path = resolve_model_path("sd-x4-upscaler-shape")
        assert path.startswith(str(tmp_path)) and resolve_model_path("sd-x4-upscaler-shape") == path
        assert len(built) == 1
    finally:
        shape_upscaler.ensure_shape_upscaler.cache_clear()
    with pytest.raises(ValueError, match="sd-x4-upscaler-shape"):
        shape_upscaler.ensure_shape_upscaler("sd-x2-upscaler-shape")


# ----------------------------------------------------------------------------- slow: every stage at paper size


@pytest.fixture(scope="module")
def shape_cache(tmp_path_factory):
    """Both shape models and the shape upscaler built in a private cache (about 13 GB), removed at the end."""
    from lightning_cat.diffusion.shape_upscaler import ensure_shape_upscaler

    folder = tmp_path_factory.mktemp("shape-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIGHTNING_CAT_CACHE", str(folder))
        shape_module.ensure_shape_model.cache_clear()
        ensure_shape_upscaler.cache_clear()
        yield folder
        shape_module.ensure_shape_model.cache_clear()
        ensure_shape_upscaler.cache_clear()
    shutil.rmtree(folder, ignore_errors=True)


def _photo(resolution):
    import make_images

    from lightning_cat.images import ImageTransform

    # the astronaut is 512 px: upscaled for 768 px
    transform = ImageTransform(resolution=resolution, small_images="upscale")
    return transform(make_images.photo("astronaut").convert("RGB")).unsqueeze(0)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 21 minutes at one thread: past the suite's 900 s
def test_every_stage_runs_on_the_shape_models(shape_cache):
    from lightning_cat.cat import CATLoss, add_cat_adapter, cat_lora_config
    from lightning_cat.customization import dreambooth_loss
    from lightning_cat.customization.lora import UNET_LORA_TARGETS, add_lora
    from lightning_cat.diffusion import build_pipeline, encode_latents, load_vae, tokenize_prompts
    from lightning_cat.metrics import LatentDistortion
    from lightning_cat.protections import build_protection
    from lightning_cat.purification import build_purifier, purify_images
    from lightning_cat.sampling import generate_images

    image = _photo(512)
    # CAT first and alone (its 512 px backward is the largest of the 512 px stages, ~12 GB):
    # one rank-128 adapter loss on the VAE; gradients reach the adapter
    vae = add_cat_adapter(load_vae("sd21-base-shape").eval(), cat_lora_config("both", rank=128))
    result = CATLoss("mse")(vae, image, torch.randn(1, 4, 64, 64))
    result.loss.backward()
    trained = [p for p in vae.parameters() if p.requires_grad]
    assert torch.isfinite(result.loss) and trained and all(p.grad is not None for p in trained)
    del vae, result, trained

    base = load_components("sd21-base-shape")
    counts = {part: sum(p.numel() for p in getattr(base, part).parameters()) for part in PUBLISHED_PARAMETERS}
    assert counts == PUBLISHED_PARAMETERS
    for part in ("unet", "vae", "text_encoder"):
        getattr(base, part).requires_grad_(False).eval()

    # protect: one PGD step of a UNet-objective and an encoder-objective method
    for method in ("advdm_plus", "photoguard"):
        protected = build_protection(method, base, steps=1, eps_255=8, show_progress=False).protect(image, ["a"])
        assert protected.shape == image.shape and torch.isfinite(protected).all()
        assert (protected - image).abs().max() <= 8 / 127.5 + 1e-6

    # sampling: two steps with classifier-free guidance
    with torch.no_grad():
        samples = generate_images(build_pipeline(base), ["a photo of sks person"], [0], num_inference_steps=2)
    assert samples.shape == (1, 3, 512, 512) and torch.isfinite(samples).all()

    # the VAE-based evaluation metric, then purification (which loads its own copy of the model)
    metric = LatentDistortion(base.vae)
    metric.update(protected, image)
    assert all(torch.isfinite(v) for v in metric.compute().values())

    # the other methods, one PGD step each (one outer iteration of ASPL); the surrogate methods
    # train the loaded model in place, so they come last. ASPL as it fits this machine: 8-bit
    # AdamW, theta and the optimizer's states on disk while theta' trains (benchmarks/scale.md).
    cheapest = {
        "mist": {},
        "sds_plus": {},
        "glaze_style": {"style_steps": 1, "lpips_random_backbone": True},
        "caat": {},
        "aspl": {
            "iterations": 1,
            "surrogate_steps": 1,
            "surrogate_optimizer": "adamw_8bit",
            "theta_stash": "disk",
            "optimizer_state_stash": "disk",
        },
    }
    for method, options in cheapest.items():
        protection = build_protection(method, base, in_place=True, steps=1, eps_255=8, show_progress=False, **options)
        extra = {"class_images": image} if protection.coupled else {}
        protected = protection.protect(image, ["a"], **extra)
        assert protected.shape == image.shape and torch.isfinite(protected).all(), method
        assert 0 < (protected - image).abs().max() <= 8 / 127.5 + 1e-6, method
    del base, metric, protection
    purifier = build_purifier(
        "latent_diffpure", pretrained_model_name_or_path="sd21-base-shape", timestep=100, num_inference_steps=2
    )
    purified = purify_images(purifier, image, ["a"])
    assert purified.shape == image.shape and torch.isfinite(purified).all()
    del purifier
    # noisy upscaling on the architecture-only x4 upscaler: 512 px -> 128 px -> 512 px
    purifier = build_purifier(
        "noisy_upscale", pretrained_model_name_or_path="sd-x4-upscaler-shape", num_inference_steps=2
    )
    purified = purify_images(purifier, image, ["a"])
    assert purified.shape == image.shape and torch.isfinite(purified).all()
    del purifier

    # customize on the 768 px v-prediction model: one LoRA DreamBooth loss (one row: 1+1 rows at
    # 768 px pass 13 GB, see benchmarks/scale.md)
    v = load_components("sd21-shape")
    assert v.prediction_type == "v_prediction" and v.unet.config.upcast_attention
    for part in ("unet", "vae", "text_encoder"):
        getattr(v, part).requires_grad_(False).eval()
    trainable = add_lora(v.unet, UNET_LORA_TARGETS, rank=16)
    with torch.no_grad():
        latents = encode_latents(v.vae, _photo(768))
        condition = v.text_encoder(tokenize_prompts(v.tokenizer, ["a photo of sks person"]))[0]
    assert latents.shape == (1, 4, 96, 96) and condition.shape == (1, 77, 1024)
    loss = dreambooth_loss(v.unet, v.noise_scheduler, latents, condition).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


#: Values each shipped SD 2.1 evaluation config logs (besides PSNR and the latent distortion).
EVALUATION_VALUES = {
    "antidreambooth": {"fid", "clip_iqa", "clip_iqac", "lpips", "brisque", "fdfr", "ism"},
    "cat": {"clip_iqa", "lpips", "fdfr", "ism"},
    "liu": {"clip_iqac", "lpips", "brisque", "fdfr", "ism"},
}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 8 minutes at one thread
def test_the_sd21_evaluation_configs_run_at_512_px(shape_cache, tmp_path):
    """configs/eval/metrics.*.sd21.yaml end to end through ``lightning-cat test`` at 512 px, with random
    weights in the metrics' real architectures (benchmarks/scale.py's evaluation_weights) and dlib's
    real face models."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import scale

    assert set(scale.EVALUATION_CONFIGS) == set(EVALUATION_VALUES)
    for protocol, expected in EVALUATION_VALUES.items():
        metrics = scale.evaluate_config(protocol, images=2, folder=tmp_path / protocol)["metrics"]
        assert expected | {"psnr", "test/base/latent_mse_relative", "test/base/recon_psnr"} <= set(metrics), protocol
        assert all(math.isfinite(value) for value in metrics.values()), (protocol, metrics)
        assert 29.5 < metrics["psnr"] < 31.5  # +-8/255 noise on every pixel: 30.1 dB before clipping
        assert metrics["fdfr"] < 1  # dlib finds the astronaut's face at 512 px
        assert metrics["test/base/latent_mse_relative"] > 0
