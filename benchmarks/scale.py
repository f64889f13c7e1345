"""Every stage on the real SD 2.1 architectures, beside the reference-style baselines.

    python benchmarks/scale.py                      # all measurements, CPU, writes results/scale.json
    python benchmarks/scale.py --only advdm_plus/lightning_cat cat/plain

Runs each stage for one step on the architecture-only models ``sd21-base-shape`` (512 px,
epsilon) and ``sd21-shape`` (768 px, v-prediction): random weights, published shapes, so memory
and time are those of the real checkpoints. Each measurement is its own process (its peak RSS,
``VmHWM``, is its own) under a watchdog that stops it when its RSS passes ``--limit-gib``: such a
stage is recorded as not fitting, with the RSS it had reached. The baselines are the plain loops
already in ``benchmarks/`` (the reference code's way: ASPL's per-iteration deep copies, the
DreamBooth loop re-encoding every image and prompt at every step, CAT's plain loop).

Nothing here is asserted; ``benchmarks/scale.md`` discusses the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
BASE, V = "sd21-base-shape", "sd21-shape"
HALF = "sd21-base-half-width"  # built by half_width_model()


def _hwm_mb() -> float:
    """Peak resident set size of this process (``VmHWM``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _photos(count: int, resolution: int):
    import torch

    sys.path.insert(0, str(HERE.parent / "tests" / "data"))
    import tempfile

    import make_images

    from lightning_cat.images import ImageTransform, load_image

    folder = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    names = sorted(make_images.PHOTOS)[:count]
    make_images.write_photos(folder, names=names, size=resolution)
    transform = ImageTransform(resolution=resolution)
    return torch.stack([transform(load_image(folder / f"{n}.png")) for n in names]), names


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- stages run here


def half_width_model() -> str:
    """SD 2.1-base with every UNet and text-encoder width halved (about a quarter of their
    parameters; VAE, tokenizer and scheduler as published), built once into the cache: ASPL's
    deep-copy baseline (six model-sized buffers in fp32) fits this machine only at this size."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lightning_cat.diffusion.shape import ensure_shape_model, shape_configs
    from lightning_cat.diffusion.tiny import build_once

    def build(folder: Path) -> None:
        shutil.copytree(
            ensure_shape_model(BASE), folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("unet", "text_encoder")
        )
        configs = shape_configs(BASE)
        unet = {k: v for k, v in configs["unet"].items() if k != "_class_name"}
        unet |= {"block_out_channels": [160, 320, 640, 640], "cross_attention_dim": 512}
        text = configs["text_encoder"] | {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
        torch.manual_seed(0)
        UNet2DConditionModel(**unet).save_pretrained(folder / "unet", safe_serialization=True)
        CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(folder / "text_encoder", safe_serialization=True)

    return str(build_once("sd21-base-half-width-bench-f1", build))


def protect(
    method: str,
    implementation: str,
    model: str,
    resolution: int,
    prior: bool = True,
    **options,
) -> dict:
    """One PGD step (one outer iteration with one surrogate step for the surrogate methods).

    ``options`` go to ours (e.g. ``theta_stash``). ``prior``: our surrogate methods train with one prior row per instance row (the baseline ASPL
    loop has none; ``prior=False`` matches it).
    """
    sys.path.insert(0, str(HERE))
    import protection_throughput as reference

    from lightning_cat.diffusion import load_components
    from lightning_cat.protections import build_protection, to_model_units

    path = half_width_model() if model == HALF else model
    imported = _rss_mb()  # the interpreter and its libraries: what a GPU's tensor memory does not hold
    components = load_components(path)
    for part in ("unet", "vae", "text_encoder"):
        getattr(components, part).requires_grad_(False).eval()
    images, keys = _photos(1, resolution)
    loaded = _rss_mb()
    if implementation == "baseline":
        if method == "advdm_plus":
            run = lambda: reference.baseline_advdm(components, images, 1, to_model_units(16), to_model_units(1))  # noqa: E731
        else:  # aspl: deep copies of UNet and text encoder per iteration and per training phase
            steps = options.get("surrogate_steps", 3 if prior else 1)  # the first runs: the reference's 3 per phase
            run = lambda: reference.baseline_aspl(  # noqa: E731
                components, images, 1, 1, to_model_units(8), to_model_units(1), surrogate_steps=steps
            )
    else:
        settings = {"steps": 1} | CHEAPEST.get(method, {})
        if method == "aspl":
            settings |= {"iterations": 1, "surrogate_steps": 1, "in_place": True}
        elif method in ("fsmg", "caat", "metacloak"):
            settings |= {"in_place": True}
        protection = build_protection(method, components, show_progress=False, **(settings | options))
        extra = {"class_images": images} if protection.coupled and prior else {}
        run = lambda: protection.protect(images, keys, seed=0, **extra)  # noqa: E731
    seconds = _timed(run)
    return {"seconds_per_step": seconds, "rss_before_load_mb": imported, "rss_after_load_mb": loaded, "batch": 1}


def protect_module(method: str, model: str, resolution: int, precision: str, **options) -> dict:
    """One ASPL iteration (one step per phase, no prior rows) through ``ProtectionModule`` under the
    Trainer, so that ``precision`` (e.g. ``bf16-mixed``) applies as in a user's run: frozen parts
    cast to bf16, the trained surrogate kept in fp32, autocast around every step."""
    import tempfile

    from lightning.pytorch import Trainer

    sys.path.insert(0, str(HERE.parent / "tests" / "data"))
    import make_images

    from lightning_cat.datamodules import ImageFolderDataModule
    from lightning_cat.modules import ProtectionModule

    folder = Path(tempfile.mkdtemp(prefix="scale-bench-module-"))
    make_images.write_photos(folder / "images", names=("astronaut",), size=resolution)
    settings = {"steps": 1, "iterations": 1, "surrogate_steps": 1} if method == "aspl" else {"steps": 1}
    module = ProtectionModule(
        method=method,
        pretrained_model_name_or_path=model,
        output_dir=str(folder / "protected"),
        **settings,
        **options,
    )
    trainer = Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder / "logs"),
    )
    datamodule = ImageFolderDataModule(str(folder / "images"), resolution=resolution, batch_size=1)
    seconds = _timed(lambda: trainer.fit(module, datamodule))
    return {"seconds_per_step": seconds, "batch": 1}


#: Each method's cheapest valid setting beyond one PGD step.
CHEAPEST = {
    "fsmg": {"surrogate_pretrain_steps": 1},
    "glaze_style": {"style_steps": 1, "lpips_random_backbone": True},
    # A pool of 2 snapshots one surrogate step apart, one cycle each: 2 PGD and 3 surrogate steps.
    "metacloak": {"rounds": 1, "pool_size": 2, "pool_interval": 1, "cycles_per_snapshot": 1, "surrogate_steps": 1},
}


def sampling(implementation: str, model: str, resolution: int) -> dict:
    """Two denoising steps with classifier-free guidance (7.5), one image."""
    import torch

    from lightning_cat.diffusion import build_pipeline, load_components, resolve_model_path
    from lightning_cat.sampling import generate_images

    steps = 2
    if implementation == "baseline":
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline.from_pretrained(resolve_model_path(model), safety_checker=None)
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        loaded = _rss_mb()
        prompt = "a photo of sks person"
        run = lambda: pipeline(prompt, num_inference_steps=steps, guidance_scale=7.5, generator=generator)  # noqa: E731
    else:
        pipeline = build_pipeline(load_components(model))
        loaded = _rss_mb()
        run = lambda: generate_images(  # noqa: E731
            pipeline, ["a photo of sks person"], [0], num_inference_steps=steps, height=resolution, width=resolution
        )
    with torch.no_grad():
        seconds = _timed(run)
    return {"seconds_per_step": seconds / steps, "seconds": seconds, "rss_after_load_mb": loaded, "batch": 1}


def purify(name: str, model: str, resolution: int) -> dict:
    """One image through a purifier at its cheapest valid setting."""
    from lightning_cat.purification import build_purifier, purify_images

    options = {
        "jpeg": {},
        "tv": {},
        "latent_diffpure": {"pretrained_model_name_or_path": model, "timestep": 100, "num_inference_steps": 2},
        "impress": {"pretrained_model_name_or_path": model, "iterations": 1, "lpips_random_backbone": True},
        # Liu et al.'s CodeSR without the face restorer: 512 px -> 128 px -> the x4 upscaler, guidance 9.
        "noisy_upscale": {
            "pretrained_model_name_or_path": "sd-x4-upscaler-shape",
            "num_inference_steps": 2,
            "guidance_scale": 9.0,
            "noise_level": 20,
            "low_resolution": 128,
        },
        # One iteration over the reference's 256 px tiles every 128 px (9 at 512 px) and the corner mosaic, 2 steps each.
        "latent_gridpure": {
            "pretrained_model_name_or_path": model,
            "timestep": 10,
            "num_inference_steps": 2,
            "iterations": 1,
            "tile_size": 256,
            "tile_stride": 128,
        },
    }[name]
    purifier = build_purifier(name, **options)
    images, keys = _photos(1, resolution)
    loaded = _rss_mb()
    seconds = _timed(lambda: purify_images(purifier, images, keys))
    steps = {"latent_diffpure": 2, "impress": 1, "latent_gridpure": 1, "noisy_upscale": 2}.get(name, 1)
    return {"seconds_per_step": seconds / steps, "seconds": seconds, "rss_after_load_mb": loaded, "batch": 1}


def vae_encoder_backward(checkpointing: str, resolution: int = 512) -> dict:
    """The VAE encoder's forward and backward to the pixels (a PGD step's VAE part) at ``resolution``:
    ``blocks`` (diffusers' checkpoint of each encoder block) or ``layers`` (``layerwise_checkpoint``)."""
    import torch
    from diffusers import AutoencoderKL

    from lightning_cat.diffusion import layerwise_checkpoint
    from lightning_cat.diffusion.shape import ensure_shape_model

    path = ensure_shape_model(BASE)
    imported = _rss_mb()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").requires_grad_(False)
    vae.enable_gradient_checkpointing(layerwise_checkpoint if checkpointing == "layers" else None)
    torch.manual_seed(0)
    images = (torch.rand(1, 3, resolution, resolution) * 2 - 1).requires_grad_(True)
    loaded = _rss_mb()

    def run():
        latents = vae.encode(images).latent_dist.mean
        torch.autograd.grad(latents.square().mean(), images)

    seconds = _timed(run)
    return {"seconds_per_step": seconds, "rss_before_load_mb": imported, "rss_after_load_mb": loaded, "batch": 1}


def evaluate(model: str, resolution: int) -> dict:
    """Latent distortion (the evaluation's one metric that runs the SD VAE) on one image pair."""
    import torch

    from lightning_cat.diffusion import load_vae
    from lightning_cat.metrics import LatentDistortion

    metric = LatentDistortion(load_vae(model).eval())
    images, _ = _photos(1, resolution)
    loaded = _rss_mb()
    protected = (images + 8 / 127.5 * torch.randn_like(images).sign()).clamp(-1, 1)
    seconds = _timed(lambda: (metric.update(protected, images), metric.compute()))
    return {"seconds_per_step": seconds, "rss_after_load_mb": loaded, "batch": 1}


def evaluation_weights() -> Path:
    """Random-weight files of the evaluation's own networks at their published architectures, built
    once into the cache: torch-fidelity's FID Inception-v3, open_clip's ViT-L-14, ViT-B-32 and RN50,
    torchvision's AlexNet (LPIPS's backbone). Their memory and time do not depend on the weights'
    values; the metrics load them through the same code as the real files."""
    import torch

    from lightning_cat.diffusion.tiny import build_once

    def build(folder: Path) -> None:
        import open_clip
        import torchvision
        from torchmetrics.image.fid import NoTrainInceptionV3

        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        empty = folder / "empty.pt"
        torch.save({}, empty)

        class RandomInception(NoTrainInceptionV3):
            def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
                return None

        inception = RandomInception(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(empty)
        )
        torch.save(inception.state_dict(), folder / "inception.pth")
        empty.unlink()
        for name in ("ViT-L-14", "ViT-B-32", "RN50"):
            model = open_clip.create_model(name, pretrained=None)
            torch.save(model.state_dict(), folder / f"open_clip_{name}.pt")
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / "alexnet.pth")
        (folder / "model_index.json").write_text("{}\n")  # build_once's mark of a finished build

    return build_once("evaluation-weights-shape-f1", build)


#: The shipped SD 2.1 evaluation configs and the Stable Diffusion model their latent distortion uses.
EVALUATION_CONFIGS = {"antidreambooth": BASE, "cat": V, "liu": BASE}


def evaluate_config(protocol: str, images: int = 4, folder: Path | None = None) -> dict:
    """``configs/eval/metrics.<protocol>.sd21.yaml`` through ``lightning-cat test`` at 512 px on
    ``images`` clean, protected and generated photographs, with the random-weight files above, the
    face metrics on dlib (its real weights ship in a package; insightface's do not install offline)
    and the latent distortion on the shape model's VAE. The image sets, config and logs go to
    ``folder`` (default: a new temporary folder)."""
    import tempfile

    import numpy as np
    import yaml
    from PIL import Image

    from lightning_cat.cli import main as cli

    sys.path.insert(0, str(HERE.parent / "tests" / "data"))
    import make_images

    weights = evaluation_weights()
    files = {
        "fid_weights": weights / "inception.pth",
        "lpips_backbone_weights": weights / "alexnet.pth",
    }
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="scale-bench-eval-"))
    names = sorted(make_images.PHOTOS)[:images]
    make_images.write_photos(folder / "clean", names=names, size=512)
    make_images.write_photos(folder / "generated", names=names, size=512)
    (folder / "protected").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        clean = np.asarray(Image.open(folder / "clean" / f"{name}.png").convert("RGB"), dtype=np.int16)
        noise = rng.choice(np.array([-8, 8], dtype=np.int16), size=clean.shape)
        Image.fromarray(np.clip(clean + noise, 0, 255).astype(np.uint8)).save(folder / "protected" / f"{name}.png")

    config = yaml.safe_load((HERE.parent / "configs" / "eval" / f"metrics.{protocol}.sd21.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        arguments = callback["init_args"]
        for key in list(arguments):
            if key in files:
                arguments[key] = str(files[key])
            elif key == "clip_weights":
                arguments[key] = str(weights / f"open_clip_{arguments['clip_model']}.pt")
            elif key == "face_backend":
                arguments |= {"face_backend": "dlib", "face_min_confidence": None}
                arguments.pop("face_models_dir", None)
            elif key == "pretrained_model_name_or_path":
                arguments[key] = EVALUATION_CONFIGS[protocol]
    config["trainer"] |= {"default_root_dir": str(folder / "logs"), "enable_progress_bar": False, "profiler": "simple"}
    config["data"]["init_args"] |= {kind + "_root": str(folder / kind) for kind in ("clean", "protected", "generated")}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = _rss_mb()
    start = time.perf_counter()
    run = cli(["test", "--config", str(path)])
    seconds = time.perf_counter() - start
    metrics = {key: float(value) for key, value in run.trainer.callback_metrics.items()}
    # Seconds per callback and hook (model loading happens in setup, the metrics in the batch and epoch hooks).
    hooks = {
        action.removeprefix("[Callback]"): sum(durations)
        for action, durations in run.trainer.profiler.recorded_durations.items()
        if action.startswith("[Callback]") and sum(durations) > 0.5
    }
    return {"seconds_per_step": seconds / images, "seconds": seconds, "rss_after_load_mb": loaded, "batch": images} | {
        "metrics": metrics,
        "callback_seconds": hooks,
    }


def dreambooth_full(
    implementation: str,
    model: str,
    resolution: int,
    checkpointing: bool,
    batch: int,
    optimizer: str = "adamw",
    precision: str = "32-true",
    steps: int = 1,
) -> dict:
    """``steps`` DreamBooth full fine-tune steps (UNet + text encoder, prior preservation, AdamW); from the
    second step on, the optimizer's states exist during the forward and backward pass."""
    import tempfile

    from lightning.pytorch import Trainer

    sys.path.insert(0, str(HERE))
    import dreambooth_throughput as reference

    from lightning_cat.modules import DreamBoothModule

    args = argparse.Namespace(resolution=resolution, batch_size=batch, images=5)
    datamodule = reference._data(args)
    module = DreamBoothModule(
        model,
        finetune="full",
        train_text_encoder=True,
        gradient_checkpointing=checkpointing,
        cache_latents=True,
        optimizer=optimizer,
    )
    trainer = Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(prefix="scale-bench-logs-"),
    )
    seconds = _timed(lambda: trainer.fit(module, datamodule))
    return {"seconds_per_step": seconds / steps, "seconds": seconds, "steps": steps, "batch": batch}


#: ASPL with every memory option: one image without prior rows, theta on disk, 8-bit AdamW, checkpointing.
_LEAN_ASPL = {
    "prior": False,
    "theta_stash": "disk",
    "surrogate_optimizer": "adamw_8bit",
    "gradient_checkpointing": True,
}

#: Every memory option that keeps the reference's arithmetic: fp32 AdamW, theta and the optimizer's states on disk.
_FP32_LEAN_ASPL = {
    "prior": False,
    "theta_stash": "disk",
    "optimizer_state_stash": "disk",
    "gradient_checkpointing": True,
}

LOCAL = {
    "advdm_plus/lightning_cat": lambda: protect("advdm_plus", "lightning_cat", BASE, 512),
    "advdm_plus_gc/lightning_cat": lambda: protect(
        "advdm_plus", "lightning_cat", BASE, 512, gradient_checkpointing=True
    ),
    "advdm_plus/baseline": lambda: protect("advdm_plus", "baseline", BASE, 512),
    "photoguard/lightning_cat": lambda: protect("photoguard", "lightning_cat", BASE, 512),
    "aspl/lightning_cat": lambda: protect("aspl", "lightning_cat", BASE, 512),
    "aspl/baseline": lambda: protect("aspl", "baseline", BASE, 512),
    # One image without prior rows on both sides (as the baseline loop trains), one surrogate step per
    # phase. On this CPU-only machine the disk stash is what a GPU run gets from theta_stash: cpu.
    # (bf16 surrogate weights are not measured here: see the ASPL notes in scale.md.)
    "aspl_stash/lightning_cat": lambda: protect("aspl", "lightning_cat", BASE, 512, prior=False, theta_stash="disk"),
    "aspl_stash_8bit/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", BASE, 512, prior=False, theta_stash="disk", surrogate_optimizer="adamw_8bit"
    ),
    "aspl_half/baseline": lambda: protect("aspl", "baseline", HALF, 512, prior=False),
    "aspl_half/lightning_cat": lambda: protect("aspl", "lightning_cat", HALF, 512, prior=False, theta_stash="disk"),
    "aspl_half_device/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, prior=False, theta_stash="device"
    ),
    "aspl_half_8bit/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, prior=False, theta_stash="disk", surrogate_optimizer="adamw_8bit"
    ),
    # Gradient checkpointing in the VAE and UNet (PGD and surrogate steps).
    "aspl_half_gc/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, prior=False, theta_stash="disk", gradient_checkpointing=True
    ),
    "aspl_half_8bit_gc/lightning_cat": lambda: protect("aspl", "lightning_cat", HALF, 512, **_LEAN_ASPL),
    # The reference's 3 surrogate steps per phase: from the second step of a phase on, AdamW's states
    # exist during the forward and backward pass (one step per phase measures a phase's first step only).
    "aspl_half_3steps/baseline": lambda: protect("aspl", "baseline", HALF, 512, prior=False, surrogate_steps=3),
    "aspl_half_3steps/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, prior=False, theta_stash="disk", surrogate_steps=3
    ),
    "aspl_half_8bit_gc_3steps/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, **_LEAN_ASPL, surrogate_steps=3
    ),
    "aspl_stash_8bit_gc/lightning_cat": lambda: protect("aspl", "lightning_cat", BASE, 512, **_LEAN_ASPL),
    # bf16-mixed through the module and the Trainer (the plain API above runs in fp32).
    "aspl_stash_8bit_bf16/lightning_cat": lambda: protect_module(
        "aspl", BASE, 512, "bf16-mixed", theta_stash="disk", surrogate_optimizer="adamw_8bit"
    ),
    "advdm_plus_bf16/lightning_cat": lambda: protect_module("advdm_plus", BASE, 512, "bf16-mixed"),
    "advdm_minus/lightning_cat": lambda: protect("advdm_minus", "lightning_cat", BASE, 512),
    "mist/lightning_cat": lambda: protect("mist", "lightning_cat", BASE, 512),
    "sds_plus/lightning_cat": lambda: protect("sds_plus", "lightning_cat", BASE, 512),
    "sds_minus/lightning_cat": lambda: protect("sds_minus", "lightning_cat", BASE, 512),
    "sdst/lightning_cat": lambda: protect("sdst", "lightning_cat", BASE, 512),
    "glaze_style/lightning_cat": lambda: protect("glaze_style", "lightning_cat", BASE, 512),
    "caat/lightning_cat": lambda: protect("caat", "lightning_cat", BASE, 512),
    "fsmg_8bit/lightning_cat": lambda: protect("fsmg", "lightning_cat", BASE, 512, surrogate_optimizer="adamw_8bit"),
    "fsmg_8bit_2steps/lightning_cat": lambda: protect(
        "fsmg", "lightning_cat", BASE, 512, surrogate_optimizer="adamw_8bit", surrogate_pretrain_steps=2
    ),
    # The pool on disk: the device (here host memory) holds one model whatever the pool's size.
    "metacloak_disk_8bit/lightning_cat": lambda: protect(
        "metacloak", "lightning_cat", BASE, 512, pool_stash="disk", surrogate_optimizer="adamw_8bit"
    ),
    # The default pool of 6 snapshots, one surrogate step apart, one cycle each: 6 PGD and 11 surrogate steps.
    "metacloak_pool6_disk_8bit/lightning_cat": lambda: protect(
        "metacloak", "lightning_cat", BASE, 512, pool_stash="disk", surrogate_optimizer="adamw_8bit", pool_size=6
    ),
    "sampling/lightning_cat": lambda: sampling("lightning_cat", BASE, 512),
    "sampling/baseline": lambda: sampling("baseline", BASE, 512),
    "purify_jpeg/lightning_cat": lambda: purify("jpeg", BASE, 512),
    "purify_tv/lightning_cat": lambda: purify("tv", BASE, 512),
    "purify_latent_diffpure/lightning_cat": lambda: purify("latent_diffpure", BASE, 512),
    "purify_impress/lightning_cat": lambda: purify("impress", BASE, 512),
    "purify_latent_gridpure/lightning_cat": lambda: purify("latent_gridpure", BASE, 512),
    "purify_noisy_upscale/lightning_cat": lambda: purify("noisy_upscale", BASE, 512),
    "evaluate_latent_distortion/lightning_cat": lambda: evaluate(BASE, 512),
    **{f"evaluate_{p}/lightning_cat": (lambda p=p: evaluate_config(p)) for p in EVALUATION_CONFIGS},
    "dreambooth_full_gc/lightning_cat": lambda: dreambooth_full("lightning_cat", BASE, 512, True, 2),
    # Liu et al.'s DreamBooth optimizer (8-bit AdamW): 10 bytes per trained parameter instead of 16.
    "dreambooth_full_gc_8bit/lightning_cat": lambda: dreambooth_full("lightning_cat", BASE, 512, True, 2, "adamw_8bit"),
    "dreambooth_full_gc_8bit_bf16/lightning_cat": lambda: dreambooth_full(
        "lightning_cat", BASE, 512, True, 2, "adamw_8bit", "bf16-mixed"
    ),
    "dreambooth_full_8bit_bf16/lightning_cat": lambda: dreambooth_full(
        "lightning_cat", BASE, 512, False, 2, "adamw_8bit", "bf16-mixed"
    ),
    # Two steps: the second one's forward and backward run beside the optimizer's states (the first
    # step creates them only in optimizer.step()), as every later step of a real run does.
    "dreambooth_full_gc_8bit_bf16_2steps/lightning_cat": lambda: dreambooth_full(
        "lightning_cat", BASE, 512, True, 2, "adamw_8bit", "bf16-mixed", steps=2
    ),
    "aspl_stash_8bit_2steps/lightning_cat": lambda: protect(
        "aspl",
        "lightning_cat",
        BASE,
        512,
        prior=False,
        theta_stash="disk",
        surrogate_optimizer="adamw_8bit",
        surrogate_steps=2,
    ),
    # The optimizer's states on disk between steps as well (sixth sitting).
    "aspl_half_lean_3steps/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, **_LEAN_ASPL, optimizer_state_stash="disk", surrogate_steps=3
    ),
    "aspl_lean_2steps/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", BASE, 512, **_LEAN_ASPL, optimizer_state_stash="disk", surrogate_steps=2
    ),
    # The same with torch's fp32 AdamW: the reference's arithmetic.
    "aspl_half_fp32_lean_3steps/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, **_FP32_LEAN_ASPL, surrogate_steps=3
    ),
    "aspl_fp32_lean_2steps/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", BASE, 512, **_FP32_LEAN_ASPL, surrogate_steps=2
    ),
    # In processes whose allocator returns freed memory at once (RETURNS_FREED_MEMORY).
    "aspl_half_3steps_returned/baseline": lambda: protect(
        "aspl", "baseline", HALF, 512, prior=False, surrogate_steps=3
    ),
    "aspl_half_8bit_gc_3steps_returned/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, **_LEAN_ASPL, surrogate_steps=3
    ),
    "aspl_half_fp32_lean_3steps_returned/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, **_FP32_LEAN_ASPL, surrogate_steps=3
    ),
    "aspl_half_lean_3steps_returned/lightning_cat": lambda: protect(
        "aspl", "lightning_cat", HALF, 512, **_LEAN_ASPL, optimizer_state_stash="disk", surrogate_steps=3
    ),
    "vae_encoder_backward/blocks": lambda: vae_encoder_backward("blocks"),
    "vae_encoder_backward/layers": lambda: vae_encoder_backward("layers"),
    "vae_encoder_backward_returned/blocks": lambda: vae_encoder_backward("blocks"),
    "vae_encoder_backward_returned/layers": lambda: vae_encoder_backward("layers"),
}

#: Run with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB: every tensor buffer is then its own
#: mapping, returned to the system when the tensor is freed, so the peak RSS follows the tensors alive
#: at once (what a GPU's ``max_memory_allocated`` counts). With glibc's default, a freed buffer under
#: its (growing, up to 32 MiB) threshold stays in the heap, and a process that frees gradients and
#: optimizer states each phase keeps up to 1.7 GiB it no longer uses (ASPL at half width, sixth sitting).
RETURNS_FREED_MEMORY = {name for name in LOCAL if "_returned/" in name}

# ----------------------------------------------------------------------------- stages run by the other scripts

_CAT = [sys.executable, str(HERE / "cat_throughput.py"), "--model", BASE, "--resolution", "512", "--rank", "128"]
_CAT += ["--steps", "1", "--warmup", "0", "--threads", "1"]
_DB = [sys.executable, str(HERE / "dreambooth_throughput.py"), "--steps", "1", "--warmup", "0"]
# Two images of each set, so two warm-up steps fill the latent cache (it encodes an image the first
# time a step sees it); the two steps after are timed.
_DB_STEADY = [sys.executable, str(HERE / "dreambooth_throughput.py"), "--steps", "2", "--warmup", "2", "--images", "2"]
_DB_STEADY += ["--model", BASE, "--resolution", "512", "--batch-size", "1"]
EXTERNAL = {
    "cat_batch4/lightning_cat": [*_CAT, "--batch-size", "4", "--only", "lightning"],
    "cat_batch4_gc/lightning_cat": [*_CAT, "--batch-size", "4", "--only", "lightning", "--gradient-checkpointing"],
    "cat_gc/lightning_cat": [*_CAT, "--batch-size", "1", "--only", "lightning", "--gradient-checkpointing"],
    "cat/lightning_cat": [*_CAT, "--batch-size", "1", "--only", "lightning"],
    "cat/plain": [*_CAT, "--batch-size", "1", "--only", "plain"],
    "cat_gc_bf16/lightning_cat": [
        *(*_CAT, "--batch-size", "1", "--only", "lightning", "--gradient-checkpointing"),
        *("--precision", "bf16-mixed"),
    ],
    "cat_batch4_gc_bf16/lightning_cat": [
        *(*_CAT, "--batch-size", "4", "--only", "lightning", "--gradient-checkpointing"),
        *("--precision", "bf16-mixed"),
    ],
    "lora/module_cache": [*_DB, "--model", BASE, "--resolution", "512", "--batch-size", "1", "--run", "module_cache"],
    "lora/plain": [*_DB, "--model", BASE, "--resolution", "512", "--batch-size", "1", "--run", "plain"],
    "lora_bf16/module_cache": [
        *_DB,
        *("--model", BASE, "--resolution", "512", "--batch-size", "1", "--precision", "bf16-mixed"),
        *("--run", "module_cache"),
    ],
    "lora_768v/module_cache": [*_DB, "--model", V, "--resolution", "768", "--batch-size", "1", "--run", "module_cache"],
    # Steps 3 and 4: after one epoch, so the weights are paged in and every latent is cached.
    "lora_steady/module_cache": [*_DB_STEADY, "--run", "module_cache"],
    "lora_steady/plain": [*_DB_STEADY, "--run", "plain"],
}
#: The order they run in (cheap and decisive first).
ORDER = [
    "advdm_plus/lightning_cat",
    "advdm_plus/baseline",
    "photoguard/lightning_cat",
    "lora/module_cache",
    "lora/plain",
    "cat/lightning_cat",
    "cat/plain",
    "sampling/lightning_cat",
    "sampling/baseline",
    "purify_jpeg/lightning_cat",
    "purify_tv/lightning_cat",
    "purify_latent_diffpure/lightning_cat",
    "purify_impress/lightning_cat",
    "purify_latent_gridpure/lightning_cat",
    "purify_noisy_upscale/lightning_cat",
    "evaluate_latent_distortion/lightning_cat",
    "aspl/lightning_cat",
    "aspl/baseline",
    "aspl_half/baseline",
    "aspl_half/lightning_cat",
    "aspl_half_device/lightning_cat",
    "aspl_half_8bit/lightning_cat",
    "aspl_stash_8bit/lightning_cat",
    "aspl_stash/lightning_cat",
    "advdm_plus_gc/lightning_cat",
    "aspl_half_gc/lightning_cat",
    "aspl_half_8bit_gc/lightning_cat",
    "aspl_stash_8bit_gc/lightning_cat",
    "aspl_stash_8bit_bf16/lightning_cat",
    "mist/lightning_cat",
    "sds_plus/lightning_cat",
    "glaze_style/lightning_cat",
    "caat/lightning_cat",
    "fsmg_8bit/lightning_cat",
    "metacloak_disk_8bit/lightning_cat",
    "dreambooth_full_gc/lightning_cat",
    "dreambooth_full_gc_8bit/lightning_cat",
    "dreambooth_full_gc_8bit_bf16/lightning_cat",
    "dreambooth_full_8bit_bf16/lightning_cat",
    "cat_batch4/lightning_cat",
    "cat_gc/lightning_cat",
    "cat_batch4_gc/lightning_cat",
    "cat_gc_bf16/lightning_cat",
    "cat_batch4_gc_bf16/lightning_cat",
    "lora_bf16/module_cache",
    "lora_768v/module_cache",
    "lora_steady/module_cache",
    "lora_steady/plain",
    "advdm_minus/lightning_cat",
    "sds_minus/lightning_cat",
    "sdst/lightning_cat",
    "advdm_plus_bf16/lightning_cat",
    "evaluate_antidreambooth/lightning_cat",
    "evaluate_cat/lightning_cat",
    "evaluate_liu/lightning_cat",
    "metacloak_pool6_disk_8bit/lightning_cat",
    "dreambooth_full_gc_8bit_bf16_2steps/lightning_cat",
    "aspl_stash_8bit_2steps/lightning_cat",
    "aspl_half_3steps/baseline",
    "aspl_half_3steps/lightning_cat",
    "aspl_half_8bit_gc_3steps/lightning_cat",
    "fsmg_8bit_2steps/lightning_cat",
    "aspl_half_lean_3steps/lightning_cat",
    "aspl_lean_2steps/lightning_cat",
    "aspl_half_fp32_lean_3steps/lightning_cat",
    "aspl_fp32_lean_2steps/lightning_cat",
    "aspl_half_3steps_returned/baseline",
    "aspl_half_8bit_gc_3steps_returned/lightning_cat",
    "aspl_half_lean_3steps_returned/lightning_cat",
    "aspl_half_fp32_lean_3steps_returned/lightning_cat",
    "vae_encoder_backward/blocks",
    "vae_encoder_backward/layers",
    "vae_encoder_backward_returned/blocks",
    "vae_encoder_backward_returned/layers",
]


def _child_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def run_one(name: str, limit_gib: float, timeout: float) -> dict:
    """``name`` in its own process, stopped when its RSS passes ``limit_gib``."""
    command = EXTERNAL.get(name) or [sys.executable, __file__, "--one", name]
    allocator = {"MALLOC_MMAP_THRESHOLD_": "65536"} if name in RETURNS_FREED_MEMORY else {}
    start = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | allocator
    )
    peak, stopped = 0.0, None
    while child.poll() is None:
        peak = max(peak, _child_rss_mb(child.pid))
        if peak > limit_gib * 1024:
            child.kill()
            stopped = f"RSS passed {limit_gib} GiB"
        elif time.perf_counter() - start > timeout:
            child.kill()
            stopped = f"ran past {timeout:.0f} s"
        time.sleep(0.2)
    stdout, stderr = child.communicate()
    row = {"measurement": name, "wall_s": time.perf_counter() - start, "watched_peak_rss_mb": peak} | allocator
    if stopped:
        return row | {"fits": False, "stopped": stopped}
    lines = [line.removeprefix("RESULT ") for line in stdout.splitlines() if line.strip().startswith(("{", "RESULT {"))]
    if child.returncode != 0 or not lines:
        return row | {"fits": None, "error": stderr[-1500:]}
    result = json.loads(lines[-1])
    if "steps_per_s" in result:  # the other scripts' format
        result = {"seconds_per_step": 1 / result["steps_per_s"], "peak_rss_mb": result["peak_mb"]}
    return row | {"fits": True} | result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run these measurements only")
    parser.add_argument("--limit-gib", type=float, default=13.0, help="stop a measurement past this RSS")
    parser.add_argument("--timeout", type=float, default=900.0, help="stop a measurement past this many seconds")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--one", choices=sorted(LOCAL), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = LOCAL[args.one]()
        print(json.dumps(result | {"peak_rss_mb": _hwm_mb()}))
        return
    output = Path(args.output)
    rows = json.loads(output.read_text()) if output.is_file() else []
    for name in args.only or ORDER:
        row = run_one(name, args.limit_gib, args.timeout)
        row["load_average"] = os.getloadavg()
        rows = [r for r in rows if r["measurement"] != name] + [row]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(rows, indent=2) + "\n")  # after every measurement: a kill keeps the rest
        summary = {k: row.get(k) for k in ("fits", "seconds_per_step", "peak_rss_mb", "stopped", "wall_s")}
        print(name, json.dumps(summary), file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
